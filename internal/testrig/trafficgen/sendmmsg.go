package trafficgen

// The sendmmsg sender: the same corpus as the in-kernel generator, sent
// the way a userspace flood is sent, for the socket receivers' side of the
// comparison (issue 16).
//
// Why an AF_PACKET socket with prebuilt Ethernet frames:
//   - Every frame may carry its own source address (100,000 sources in the
//     flood, the panics from sources of their own) with one socket: the
//     frames are packettest's, byte for byte those of the live generator,
//     the source rewritten in place. A UDP socket sends from its own
//     address only: IP_FREEBIND or IP_TRANSPARENT would need a socket
//     bound to each source (or an IP_PKTINFO control message a datagram,
//     and a route back for each), and the sender's own UDP, IP, routing
//     and neighbour code would be timed with the receiver's.
//   - A frame written to an AF_PACKET socket goes straight to the veth's
//     transmit (PACKET_QDISC_BYPASS: no qdisc), and from there to the
//     peer as an skb, which climbs the collector's stack as a NIC's frame
//     would: through netif_rx and its backlog, IP and UDP, into the socket
//     buffer. The receive work runs in softirq on the sending CPU as each
//     frame is transmitted, so the feed is paced by the stack itself: a
//     steady stream, not the bursts of hundreds of frames at the kernel's
//     speed that the live generator's BPF_PROG_TEST_RUN calls are.
//
// golang.org/x/net's ipv4/ipv6 PacketConn.WriteBatch also calls sendmmsg,
// but only on a net.PacketConn, and the net package cannot wrap an
// AF_PACKET socket; golang.org/x/sys/unix has the mmsghdr (unix.Mmsghdr)
// and the system call's number but no wrapper, so sendmmsg is called here
// directly.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/lastgasp/lastgasp/internal/testrig/packettest"
	"github.com/lastgasp/lastgasp/internal/testrig/testnet"
)

// DefaultMmsgBatch is the sendmmsg sender's frames a call when the plan
// gives none (Plan.Repeat 0).
const DefaultMmsgBatch = 64

// maxMmsgBatch bounds the frames a call: UIO_MAXIOV, the kernel's limit
// for sendmmsg's vlen.
const maxMmsgBatch = 1024

// SendmmsgFrom sends a timed plan's frames of c out of the interface
// ifname of ns with sendmmsg on an AF_PACKET socket: the flood until
// plan.Duration has passed, plan.Repeat frames a call (DefaultMmsgBatch
// if 0), frame k carrying c.Ordinary[k % len] from Source(k %
// plan.Sources), paced to plan.Rate frames a second if set (a sleep after
// each call until the frames sent so far are due); and plan.Panics panics,
// as a timed plan of RunFrom sends them: panic k from PanicSourceN(k) at
// Duration*(0.1 + 0.8*k/Panics), each frame of it PanicInterval apart, by
// a second thread on a socket of its own. The frames are IPv4 (plan.Dst
// must be); Stats are those of RunFrom, Sent counting the frames the
// kernel took, those the veth then dropped included (TxDropped).
//
// Unlike RunFrom, nothing need be attached to the veth's peer: the frames
// arrive as skbs and go up the collector's stack.
func SendmmsgFrom(ns *testnet.Netns, ifname string, c *Corpus, plan Plan) (Stats, error) {
	if plan.Duration <= 0 {
		return Stats{}, errors.New("sendmmsg sender: only timed plans (Duration > 0)")
	}
	if !plan.Dst.Is4() {
		return Stats{}, fmt.Errorf("sendmmsg sender: destination %v: only IPv4", plan.Dst)
	}
	plan.Sources = max(plan.Sources, 1)
	if plan.Sources > MaxSources {
		// Source(i) is defined for i < MaxSources only.
		return Stats{}, fmt.Errorf("sendmmsg sender: %d sources, at most %d", plan.Sources, MaxSources)
	}
	batch := int(plan.Repeat)
	if batch == 0 {
		batch = DefaultMmsgBatch
	}
	if batch > maxMmsgBatch {
		return Stats{}, fmt.Errorf("sendmmsg sender: %d frames a call, at most %d", batch, maxMmsgBatch)
	}
	var flood, panics *packetSocket
	err := ns.Do(func() error {
		var err error
		if flood, err = openPacketSocket(ifname); err != nil {
			return err
		}
		panics, err = openPacketSocket(ifname)
		return err
	})
	defer func() { flood.close(); panics.close() }()
	if err != nil {
		return Stats{}, err
	}
	templates := make([][]byte, len(c.Ordinary))
	for i, p := range c.Ordinary {
		templates[i] = packettest.UDP{Src: Source(0).Addr(), Dst: plan.Dst, Payload: p}.Frame()
	}
	return flood.runTimed(panics, templates, c, plan, batch)
}

// packetSocket is an AF_PACKET socket bound to one interface, sending
// whole Ethernet frames.
type packetSocket struct {
	fd int
}

// openPacketSocket opens a packet socket on ifname of the calling
// thread's network namespace. It binds with protocol 0, so it receives
// nothing, and bypasses the qdisc.
func openPacketSocket(ifname string) (*packetSocket, error) {
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		return nil, fmt.Errorf("sendmmsg sender: %w", err)
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("sendmmsg sender: open an AF_PACKET socket: %w", err)
	}
	s := &packetSocket{fd: fd}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Ifindex: ifi.Index}); err != nil {
		s.close()
		return nil, fmt.Errorf("sendmmsg sender: bind an AF_PACKET socket to %s: %w", ifname, err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_QDISC_BYPASS, 1); err != nil {
		s.close()
		return nil, fmt.Errorf("sendmmsg sender: PACKET_QDISC_BYPASS on %s: %w", ifname, err)
	}
	return s, nil
}

func (s *packetSocket) close() {
	if s != nil {
		unix.Close(s.fd)
	}
}

// mmsgBatch is the memory of one sendmmsg call: a frame buffer, an iovec
// and a message header a slot, the headers pointing at the iovecs and
// the iovecs at the buffers once and for all.
type mmsgBatch struct {
	frames [][]byte
	iovs   []unix.Iovec
	msgs   []unix.Mmsghdr
}

func newMmsgBatch(n, frameLen int) *mmsgBatch {
	b := &mmsgBatch{frames: make([][]byte, n), iovs: make([]unix.Iovec, n), msgs: make([]unix.Mmsghdr, n)}
	for i := range n {
		b.frames[i] = make([]byte, frameLen)
		b.iovs[i].Base = &b.frames[i][0]
		b.msgs[i].Hdr.Iov = &b.iovs[i]
		b.msgs[i].Hdr.Iovlen = 1
	}
	return b
}

// fill puts n frames in the batch's slots, frame j a copy of
// templates[(k+j) % len] from Source((k+j) % sources).
func (b *mmsgBatch) fill(templates [][]byte, k uint64, n, sources int) {
	for j := range n {
		t := templates[(k+uint64(j))%uint64(len(templates))]
		f := b.frames[j][:len(t)]
		copy(f, t)
		rewriteSourceV4(f, Source(int((k+uint64(j))%uint64(sources))).Addr())
		b.iovs[j].SetLen(len(t))
	}
}

// rewriteSourceV4 writes src as the IPv4 source address of an untagged
// Ethernet frame made by packettest (the IPv4 header at offset 14, no UDP
// checksum) and updates the header checksum for the change alone (RFC
// 1624: HC' = ~(~HC + ~m + m') over the address's two 16-bit words).
// This incremental update is kept apart from packettest.OnesSum on
// purpose: it runs per frame on the send path and reads four words, where
// a full sum would re-read the header; TestRewriteSourceV4 checks its
// result against packettest's full checksum.
func rewriteSourceV4(frame []byte, src netip.Addr) {
	ip := frame[14:]
	a := src.As4()
	sum := uint32(^binary.BigEndian.Uint16(ip[10:]))
	for w := 12; w < 16; w += 2 {
		sum += uint32(^binary.BigEndian.Uint16(ip[w:])) + uint32(binary.BigEndian.Uint16(a[w-12:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	copy(ip[12:16], a[:])
	binary.BigEndian.PutUint16(ip[10:], ^uint16(sum))
}

// send transmits the first n frames of b and returns how many the kernel
// took. A frame the kernel refuses with ENOBUFS (the veth dropped it:
// counted in its TX drops) is counted as taken, as a frame the live
// generator redirects into a full ring is. sendmmsg returns an error only
// for the call's first message: for a later one it returns the count
// before it and drops the error (the kernel keeps it nowhere, not in
// SO_ERROR). The one error a message after the first meets on this
// socket is the veth's ENOBUFS (the socket never waits for send buffer:
// the veth frees each frame's skb as it takes it), so the frame after a
// short count is counted as taken, not sent again; an error that lasts
// comes back as the next call's first message, and is returned.
func (s *packetSocket) send(b *mmsgBatch, n int) (int, error) {
	done := 0
	for done < n {
		r, _, errno := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(s.fd),
			uintptr(unsafe.Pointer(&b.msgs[done])), uintptr(n-done), 0, 0, 0)
		switch {
		case errno == unix.EINTR || errno == unix.EAGAIN:
			continue
		case errno == unix.ENOBUFS:
			done++ // the call's first frame, dropped
			continue
		case errno != 0:
			return done, fmt.Errorf("sendmmsg on an AF_PACKET socket: %w", errno)
		}
		done += int(r)
		if done < n {
			done++ // the frame after the last one sent, dropped
		}
	}
	return done, nil
}

// sendOne transmits one frame (a write on the bound socket); ENOBUFS (the
// veth dropped it) counts as sent, as in send.
func (s *packetSocket) sendOne(frame []byte) error {
	for {
		_, err := unix.Write(s.fd, frame)
		switch {
		case err == nil || errors.Is(err, unix.ENOBUFS):
			return nil
		case errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN):
			continue
		default:
			return fmt.Errorf("write a frame on an AF_PACKET socket: %w", err)
		}
	}
}

// runTimed is SendmmsgFrom once its sockets are open: the flood on s from
// this goroutine, the panics on ps from another.
func (s *packetSocket) runTimed(ps *packetSocket, templates [][]byte, c *Corpus, plan Plan, batch int) (Stats, error) {
	frameLen := 0
	for _, t := range templates {
		frameLen = max(frameLen, len(t))
	}
	b := newMmsgBatch(batch, frameLen)
	var (
		st         Stats
		mu         sync.Mutex // guards panicTimes and panicSent
		panicTimes []time.Duration
		panicSent  uint64
	)
	panicDone := make(chan error, 1)
	start := time.Now()
	go func() {
		for k := range plan.Panics {
			at := time.Duration(float64(plan.Duration) * (0.1 + 0.8*float64(k)/float64(plan.Panics)))
			time.Sleep(time.Until(start.Add(at)))
			mu.Lock()
			panicTimes = append(panicTimes, time.Since(start))
			mu.Unlock()
			src := plan.PanicSourceN(k)
			for _, p := range c.Panic {
				f := packettest.UDP{Src: src.Addr(), SrcPort: src.Port(), Dst: plan.Dst, Payload: p}.Frame()
				if err := ps.sendOne(f); err != nil {
					panicDone <- err
					return
				}
				mu.Lock()
				panicSent++
				mu.Unlock()
				time.Sleep(plan.PanicInterval)
			}
		}
		panicDone <- nil
	}()

	var k uint64
	var floodErr error
	for time.Since(start) < plan.Duration {
		b.fill(templates, k, batch, plan.Sources)
		n, err := s.send(b, batch)
		k += uint64(n)
		if err != nil {
			floodErr = err
			break
		}
		if plan.Rate > 0 {
			time.Sleep(time.Until(start.Add(time.Duration(float64(k) / plan.Rate * float64(time.Second)))))
		}
	}
	// The panics are all inside the flood when they finished before it.
	select {
	case err := <-panicDone:
		st.PanicInFlood = true
		panicDone <- err
	default:
	}
	if err := errors.Join(floodErr, <-panicDone); err != nil {
		return st, err
	}
	st.Elapsed = time.Since(start)
	st.Ordinary = k
	st.Panic = panicSent
	st.Sent = k + panicSent
	st.Panics = plan.Panics
	st.PanicTimes = panicTimes
	return st, nil
}
