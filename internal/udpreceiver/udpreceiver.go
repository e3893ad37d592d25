// Package udpreceiver is the socket data path: a plain ReadFromUDP loop
// that runs every datagram through filter.Filter, for hosts where XDP is
// not allowed, and the baseline the XDP path is measured against.
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

	"golang.org/x/sys/unix"

	"github.com/lastgasp/lastgasp/internal/filter"
)

// DefaultReadBuffer is the socket receive buffer asked for: enough for a
// burst of tens of thousands of console lines.
const DefaultReadBuffer = 64 << 20

// Counters are what the receiver saw.
type Counters struct {
	Datagrams uint64 // datagrams read
	Matched   uint64 // forwarded as a match
	Context   uint64 // forwarded as context
	Truncated uint64 // longer than filter.MaxPayload
	// Drops counts datagrams the kernel dropped before this socket could
	// read them (its buffer full): lost lines. From SO_MEMINFO.
	Drops uint64
}

// Receiver reads netconsole datagrams from one UDP socket.
type Receiver struct {
	conn   *net.UDPConn
	filter *filter.Filter

	datagrams, matched, context, truncated atomic.Uint64
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

// Run reads datagrams until ctx is done, calling emit with every line the
// filter forwards; the Line's Payload is emit's to keep. It returns nil
// when ctx is done, or the read error that stopped it.
func (r *Receiver) Run(ctx context.Context, emit func(filter.Line)) error {
	stop := context.AfterFunc(ctx, func() { r.conn.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	buf := make([]byte, 64<<10) // the largest UDP datagram
	for {
		n, src, err := r.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("read netconsole datagram: %w", err)
		}
		r.datagrams.Add(1)
		line, ok := r.filter.Judge(src, buf[:n], time.Now())
		if !ok {
			continue
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
}

// Counters returns what the receiver has seen so far.
func (r *Receiver) Counters() Counters {
	return Counters{
		Datagrams: r.datagrams.Load(),
		Matched:   r.matched.Load(),
		Context:   r.context.Load(),
		Truncated: r.truncated.Load(),
		Drops:     r.drops(),
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
