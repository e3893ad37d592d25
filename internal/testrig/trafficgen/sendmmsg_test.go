package trafficgen_test

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lastgasp/lastgasp/internal/filter"
	"github.com/lastgasp/lastgasp/internal/netconsole"
	"github.com/lastgasp/lastgasp/internal/testrig/testnet"
	"github.com/lastgasp/lastgasp/internal/testrig/trafficgen"
	"github.com/lastgasp/lastgasp/internal/udpreceiver"
)

// TestSendmmsgReachesSocket sends a timed plan (400 ms at 50,000 frames/s,
// 10 sources, two panics) with the sendmmsg sender into a veth whose peer
// has no XDP program, to a plain UDP socket with a 64 MiB buffer: every
// frame must arrive as a datagram (none dropped at this rate), the
// ordinary lines from all 10 sources in both formats, and each panic whole
// and in order from its own known source, at the times the stats say.
func TestSendmmsgReachesSocket(t *testing.T) {
	pair := testnet.NewPair(t)
	corpus, err := trafficgen.LoadCorpus("../../../testdata/netconsole")
	if err != nil {
		t.Fatal(err)
	}
	var conn *net.UDPConn
	if err := pair.Collector.Netns.Do(func() (err error) {
		conn, err = listenUDP(t.Context(), netip.AddrPortFrom(pair.Collector.IPv4, 6666), 64<<20)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })

	type datagram struct {
		src     netip.AddrPort
		payload []byte
	}
	var (
		mu  sync.Mutex
		got []datagram
	)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	context.AfterFunc(ctx, func() { conn.SetReadDeadline(time.Unix(1, 0)) })
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		buf := make([]byte, 2048)
		for {
			n, src, err := conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			mu.Lock()
			got = append(got, datagram{netip.AddrPortFrom(src.Addr().Unmap(), src.Port()), bytes.Clone(buf[:n])})
			mu.Unlock()
		}
	}()

	plan := trafficgen.Plan{
		Dst: pair.Collector.IPv4, Sources: 10, Rate: 50_000, Duration: 400 * time.Millisecond,
		Panics: 2, PanicSource: panicSource, PanicInterval: 100 * time.Microsecond,
	}
	st, err := trafficgen.SendmmsgFrom(pair.Node.Netns, pair.Node.Ifname, corpus, plan)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("sent %d ordinary and %d panic frames in %v: %.0f frames/s, panics at %v", st.Ordinary, st.Panic, st.Elapsed, st.Offered(), st.PanicTimes)
	if st.Panics != 2 || len(st.PanicTimes) != 2 || st.Panic != uint64(2*len(corpus.Panic)) || !st.PanicInFlood {
		t.Fatalf("stats: %d panics at %v, %d panic frames, in flood %v; want 2 panics, %d frames, inside the flood",
			st.Panics, st.PanicTimes, st.Panic, st.PanicInFlood, 2*len(corpus.Panic))
	}
	for k, at := range st.PanicTimes {
		if want := time.Duration(float64(plan.Duration) * (0.1 + 0.4*float64(k))); at < want || at > want+100*time.Millisecond {
			t.Errorf("panic %d sent at %v, want about %v", k, at, want)
		}
	}
	if off := st.Offered(); off < 25_000 || off > 60_000 || st.Sent != st.Ordinary+st.Panic {
		t.Errorf("offered %.0f frames/s (asked 50,000), sent %d of %d+%d", off, st.Sent, st.Ordinary, st.Panic)
	}

	// Wait for the socket to have every frame (or for 5 s).
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		mu.Lock()
		n := uint64(len(got))
		mu.Unlock()
		if n >= st.Sent {
			break
		}
	}
	cancel()
	<-readDone
	if uint64(len(got)) != st.Sent {
		dropped, _ := trafficgen.TxDropped(pair.Node.Netns, pair.Node.Ifname)
		t.Fatalf("the socket read %d datagrams of %d sent (veth TX drops %d)", len(got), st.Sent, dropped)
	}

	dec := netconsole.NewDecoder(netconsole.Config{})
	sources := map[netip.AddrPort]int{}
	formats := map[bool]int{}
	panics := map[netip.AddrPort][][]byte{}
	for _, d := range got {
		if d.src.Addr().Compare(panicSource.Addr()) >= 0 && d.src.Addr().Compare(plan.PanicSourceN(1).Addr()) <= 0 {
			panics[d.src] = append(panics[d.src], d.payload)
			continue
		}
		sources[d.src]++
		for _, m := range dec.Decode(d.src, d.payload, time.Now()) {
			formats[m.Extended]++
		}
	}
	if len(sources) != 10 {
		t.Errorf("ordinary lines from %d sources, want 10: %v", len(sources), sources)
	}
	for i := range 10 {
		if src := trafficgen.Source(i); sources[src] == 0 {
			t.Errorf("no line from source %d, %v", i, src)
		}
	}
	if formats[true] == 0 || formats[false] == 0 {
		t.Errorf("decoded %d extended and %d basic messages, want both formats", formats[true], formats[false])
	}
	for k := range 2 {
		src := plan.PanicSourceN(k)
		if p := panics[src]; len(p) != len(corpus.Panic) {
			t.Errorf("panic %d from %v: %d frames, want %d", k, src, len(p), len(corpus.Panic))
			continue
		}
		for i, p := range panics[src] {
			if !bytes.Equal(p, corpus.Panic[i]) {
				t.Errorf("panic %d from %v, frame %d: %q, want %q", k, src, i, p, corpus.Panic[i])
				break
			}
		}
	}
	t.Logf("%d datagrams: %d extended and %d basic messages decoded, %d panic sources", len(got), formats[true], formats[false], len(panics))
}

// TestSendmmsgReachesUDPReceiver sends a timed plan (400 ms at 100,000
// frames/s, 100 sources, three panics) with the sendmmsg sender to the
// product's socket receiver (udpreceiver: recvmmsg, 64 MiB, the filter):
// it must read every frame sent (or count the ones the kernel dropped)
// and forward each panic's lines, as many as a collector forwards of it
// alone, from each panic's own source.
func TestSendmmsgReachesUDPReceiver(t *testing.T) {
	pair := testnet.NewPair(t)
	corpus, err := trafficgen.LoadCorpus("../../../testdata/netconsole")
	if err != nil {
		t.Fatal(err)
	}
	var r *udpreceiver.Receiver
	if err := pair.Collector.Netns.Do(func() (err error) {
		r, err = udpreceiver.Listen(t.Context(), netip.AddrPortFrom(pair.Collector.IPv4, 6666).String(), 64<<20, filter.New(filter.Config{}))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	var (
		mu  sync.Mutex
		fwd = map[netip.AddrPort]int{}
	)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	runDone := make(chan error, 1)
	go func() {
		runDone <- r.Run(ctx, func(l filter.Line) {
			mu.Lock()
			fwd[l.Source]++
			mu.Unlock()
		})
	}()

	plan := trafficgen.Plan{
		Dst: pair.Collector.IPv4, Repeat: 128, Sources: 100, Rate: 100_000, Duration: 400 * time.Millisecond,
		Panics: 3, PanicSource: panicSource, PanicInterval: 100 * time.Microsecond,
	}
	st, err := trafficgen.SendmmsgFrom(pair.Node.Netns, pair.Node.Ifname, corpus, plan)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("sent %d frames in %v: %.0f frames/s", st.Sent, st.Elapsed, st.Offered())
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if c := r.Counters(); c.Datagrams+c.Drops >= st.Sent {
			break
		}
	}
	cancel()
	if err := <-runDone; err != nil {
		t.Fatal(err)
	}
	c := r.Counters()
	dropped, err := trafficgen.TxDropped(pair.Node.Netns, pair.Node.Ifname)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("udpreceiver: %+v; veth TX drops %d", c, dropped)
	if c.Datagrams+c.Drops+dropped < st.Sent || c.Datagrams > st.Sent {
		t.Errorf("read %d datagrams, the socket dropped %d and the veth %d: want the %d sent", c.Datagrams, c.Drops, dropped, st.Sent)
	}
	want := len(expectedPanicLines(corpus))
	mu.Lock()
	defer mu.Unlock()
	for k := range 3 {
		if src := plan.PanicSourceN(k); fwd[src] != want {
			t.Errorf("panic %d from %v: %d lines forwarded, want %d (all: %v)", k, src, fwd[src], want, fwd)
		}
	}
}

// listenUDP opens a UDP socket on addr with a receive buffer of size bytes
// (SO_RCVBUFFORCE).
func listenUDP(ctx context.Context, addr netip.AddrPort, size int) (*net.UDPConn, error) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, size)
		})
		return errors.Join(err, serr)
	}}
	pc, err := lc.ListenPacket(ctx, "udp4", addr.String())
	if err != nil {
		return nil, err
	}
	return pc.(*net.UDPConn), nil
}
