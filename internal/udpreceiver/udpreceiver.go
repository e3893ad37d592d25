// Package udpreceiver is the socket data path: a loop that reads
// datagrams in batches (recvmmsg, up to BatchSize a system call, as Meta's
// netconsd does) and runs every datagram through filter.Filter, for hosts
// where XDP is not allowed, and the baseline the XDP path is measured
// against. Measured under a flood (bench/, issue 16) it handles several
// times the rate of one ReadFromUDP a datagram for a fraction of the CPU.
//
// Unlike the XDP program it sees only what the kernel's UDP stack delivers:
// datagrams dropped for a full socket buffer are lost before it can count
// them (the kernel counts them as UDP RcvbufErrors).
package udpreceiver

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"

	"github.com/lastgasp/lastgasp/internal/filter"
)

// DefaultReadBuffer is the socket receive buffer asked for: enough for a
// burst of tens of thousands of console lines.
const DefaultReadBuffer = 64 << 20

// BatchSize is the most datagrams one read (recvmmsg) returns.
const BatchSize = 512

// slotSize is the room for one datagram of a batch: one byte more than a
// forwarded line may carry, so that the filter sees that a longer datagram
// (cut by the kernel to this size) was longer, and truncates and flags it.
const slotSize = filter.MaxPayload + 1

// Counters are what the receiver saw.
type Counters struct {
	Datagrams uint64 // datagrams read
	Matched   uint64 // forwarded as a match
	Context   uint64 // forwarded as context
	Truncated uint64 // longer than filter.MaxPayload
	// Drops counts datagrams the kernel dropped before this socket could
	// read them (its buffer full): lost lines. From SO_MEMINFO.
	Drops uint64
	// Reads counts the read system calls (recvmmsg) that returned
	// datagrams: Datagrams/Reads is the batch a call gets.
	Reads uint64
}

// Receiver reads netconsole datagrams from one UDP socket.
type Receiver struct {
	conn   *net.UDPConn
	filter *filter.Filter

	datagrams, matched, context, truncated, reads atomic.Uint64
}

// Listen opens a UDP socket on addr (e.g. ":6666" or "[::]:6666") with a
// receive buffer of readBuffer bytes (0: DefaultReadBuffer), forced past
// net.core.rmem_max with SO_RCVBUFFORCE where the process may.
func Listen(ctx context.Context, addr string, readBuffer int, f *filter.Filter) (*Receiver, error) {
	if readBuffer == 0 {
		readBuffer = DefaultReadBuffer
	}
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, readBuffer)
			if errors.Is(serr, unix.EPERM) {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, readBuffer)
			}
		})
		return errors.Join(err, serr)
	}}
	pc, err := lc.ListenPacket(ctx, "udp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen for netconsole on %s: %w", addr, err)
	}
	return &Receiver{conn: pc.(*net.UDPConn), filter: f}, nil
}

// Addr returns the socket's local address.
func (r *Receiver) Addr() netip.AddrPort {
	return r.conn.LocalAddr().(*net.UDPAddr).AddrPort()
}

// Run reads datagrams until ctx is done, in batches of up to BatchSize,
// calling emit with every line the filter forwards; the Line's Payload is
// emit's to keep. It returns nil when ctx is done, or the read error that
// stopped it.
func (r *Receiver) Run(ctx context.Context, emit func(filter.Line)) error {
	stop := context.AfterFunc(ctx, func() { r.conn.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	// ipv4.PacketConn's ReadBatch is recvmmsg on any UDP socket: the
	// source addresses come back as the kernel gives them, IPv6 ones
	// included (no control messages are asked for).
	pc := ipv4.NewPacketConn(r.conn)
	msgs := make([]ipv4.Message, BatchSize)
	for i := range msgs {
		msgs[i].Buffers = [][]byte{make([]byte, slotSize)}
	}
	for {
		n, err := pc.ReadBatch(msgs, 0)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("read netconsole datagrams: %w", err)
		}
		r.reads.Add(1)
		r.datagrams.Add(uint64(n))
		now := time.Now()
		for _, m := range msgs[:n] {
			ua, ok := m.Addr.(*net.UDPAddr)
			if !ok {
				continue
			}
			src := ua.AddrPort()
			src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
			r.judge(src, m.Buffers[0][:m.N], now, emit)
		}
	}
}

// judge runs one datagram through the filter and emits what it forwards.
func (r *Receiver) judge(src netip.AddrPort, payload []byte, now time.Time, emit func(filter.Line)) {
	line, ok := r.filter.Judge(src, payload, now)
	if !ok {
		return
	}
	switch line.Flag {
	case filter.Match:
		r.matched.Add(1)
	case filter.Context:
		r.context.Add(1)
	}
	if line.Truncated {
		r.truncated.Add(1)
	}
	line.Payload = bytes.Clone(line.Payload)
	emit(line)
}

// Counters returns what the receiver has seen so far.
func (r *Receiver) Counters() Counters {
	return Counters{
		Datagrams: r.datagrams.Load(),
		Matched:   r.matched.Load(),
		Context:   r.context.Load(),
		Truncated: r.truncated.Load(),
		Drops:     r.drops(),
		Reads:     r.reads.Load(),
	}
}

// drops reads the socket's drop counter: SO_MEMINFO fills an array of
// SK_MEMINFO_VARS uint32s, the last of which (SK_MEMINFO_DROPS) counts
// the datagrams dropped on this socket. 0 if it cannot be read (a closed
// socket).
func (r *Receiver) drops() uint64 {
	raw, err := r.conn.SyscallConn()
	if err != nil {
		return 0
	}
	var meminfo [unix.SK_MEMINFO_VARS]uint32
	var n uint64
	raw.Control(func(fd uintptr) {
		size := uint32(unsafe.Sizeof(meminfo))
		_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, fd, unix.SOL_SOCKET, unix.SO_MEMINFO,
			uintptr(unsafe.Pointer(&meminfo)), uintptr(unsafe.Pointer(&size)), 0)
		if errno == 0 && size >= uint32(unsafe.Sizeof(meminfo)) {
			n = uint64(meminfo[unix.SK_MEMINFO_DROPS])
		}
	})
	return n
}

// Close closes the socket.
func (r *Receiver) Close() error {
	return r.conn.Close()
}
