package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lastgasp/lastgasp/internal/filter"
	"github.com/lastgasp/lastgasp/internal/testrig/testnet"
	"github.com/lastgasp/lastgasp/internal/testrig/trafficgen"
	"github.com/lastgasp/lastgasp/internal/udpreceiver"
	"github.com/lastgasp/lastgasp/loader"
	"github.com/lastgasp/lastgasp/ringbuf"
)

// receiverPanicSource is the injected panic's source, outside the
// generator's ordinary sources (10.128.0.0/9).
var receiverPanicSource = netip.MustParseAddrPort("10.99.0.2:6665")

// receiverResult is what one receiver saw of one run of the generator.
type receiverResult struct {
	offeredPPS float64
	sent       uint64 // frames the generator sent
	received   uint64 // frames the receiver handled
	panicLines int    // panic lines it forwarded, from the panic's source
	wantPanic  int    // panic lines a collector forwards (the Go twin)
	detected   bool   // a fatal incident from the panic's source
	inFlood    bool   // the whole panic was sent inside the flood
	vethDrops  uint64 // frames the collector's veth ring had no room for
}

// BenchmarkReceivers runs the in-kernel generator (package trafficgen:
// BPF_PROG_TEST_RUN live frames redirected into the node's veth end) at its
// own top rate against each receiver in turn, on a fresh veth pair each:
//
//   - xdp: lastgasp's data path, the XDP program attached (native) to the
//     collector's veth end, its ring buffer read by ringbuf.Reader, every
//     forwarded line through detect.Assembler (decoder and detector);
//   - socket: one ReadFromUDP a datagram (readOneByOne: the Titus design,
//     lastgasp's socket mode before issue 16) with the default socket
//     buffer (net.core.rmem_default);
//   - socket-64m: the same with a 64 MiB buffer (SO_RCVBUFFORCE);
//   - recvmmsg: udpreceiver, the product's socket mode: golang.org/x/net's
//     ReadBatch, up to 512 datagrams a call (netconsd's design), 64 MiB
//     buffer, filter.Filter per datagram.
//
// The socket receivers are fed by the same generator: an XDP_PASS program
// on the collector's end makes the veth accept the redirected frames and
// pass them up the stack as skbs. A run is 100 batches of 20,000 copies of
// an ordinary line (basic and extended, from the real captures), each
// batch from another of 100 source addresses, with the real panic's 61
// frames, in order, from 10.99.0.2, 100 µs apart, sent by a second
// thread from batch 20 on, inside the flood (in-flood reports 1 when the
// last panic frame went out before the flood's last batch).
//
// Metrics per receiver: offered-pps (what the generator reached), received
// and lost lines (lost: sent but never handled, dropped in the veth ring
// or the socket buffer; veth-drops: those of the veth ring, the node
// end's TX drops), panic-lines and panic-lines-want (forwarded from
// the panic's source, against what a collector forwards of it alone),
// all-panic-lines (1 if every one arrived) and detected (1 if the
// assembler found the panic fatal).
func BenchmarkReceivers(b *testing.B) {
	corpus, err := trafficgen.LoadCorpus("../testdata/netconsole")
	if err != nil {
		b.Fatal(err)
	}
	plan := trafficgen.Plan{Batches: 100, Repeat: 20_000, Sources: 100, PanicAt: 20, PanicSource: receiverPanicSource, PanicInterval: 100 * time.Microsecond}
	for _, name := range floodReceivers {
		b.Run(name, func(b *testing.B) {
			var r receiverResult
			for range b.N {
				r = runReceiver(b, name, corpus, plan)
			}
			reportReceiver(b, r)
		})
	}
}

// BenchmarkGeneratorRate is the generator's top rate into lastgasp's XDP
// program: one thread, 10 batches of 1,000,000 copies (so the ~1 ms each
// BPF_PROG_TEST_RUN call costs besides its frames hardly counts), the
// panic sent by the same thread between batches 5 and 6. Same metrics as
// BenchmarkReceivers.
func BenchmarkGeneratorRate(b *testing.B) {
	corpus, err := trafficgen.LoadCorpus("../testdata/netconsole")
	if err != nil {
		b.Fatal(err)
	}
	plan := trafficgen.Plan{Batches: 10, Repeat: 1_000_000, Sources: 10, PanicAt: 5, PanicSource: receiverPanicSource, PanicInline: true}
	var r receiverResult
	for range b.N {
		r = runReceiver(b, "xdp", corpus, plan)
	}
	reportReceiver(b, r)
}

// reportReceiver reports r's metrics.
func reportReceiver(b *testing.B, r receiverResult) {
	b.ReportMetric(r.offeredPPS, "offered-pps")
	b.ReportMetric(float64(r.received), "received")
	b.ReportMetric(float64(r.sent-r.received), "lost")
	b.ReportMetric(float64(r.panicLines), "panic-lines")
	b.ReportMetric(float64(r.wantPanic), "panic-lines-want")
	b.ReportMetric(boolMetric(r.panicLines == r.wantPanic), "all-panic-lines")
	b.ReportMetric(boolMetric(r.detected), "detected")
	b.ReportMetric(boolMetric(r.inFlood), "in-flood")
	b.ReportMetric(float64(r.vethDrops), "veth-drops")
}

// BenchmarkReceiversPaced is BenchmarkReceivers at paced rates: the
// flood in bursts of 500 frames (one BPF_PROG_TEST_RUN call, about a
// millisecond apart at best), the generator sleeping between them to hold
// the rate, for about 2 s a rate, the panic from a second thread 20% in.
// Bursts of 500 at the kernel's speed are harsher on a socket buffer than
// a smooth feed of the same average rate: read the rate at which a
// receiver first loses panic lines as an upper bound.
func BenchmarkReceiversPaced(b *testing.B) {
	corpus, err := trafficgen.LoadCorpus("../testdata/netconsole")
	if err != nil {
		b.Fatal(err)
	}
	for _, rate := range []int{50_000, 100_000, 200_000, 400_000} {
		batches := rate * 2 / 500
		plan := trafficgen.Plan{Batches: batches, Repeat: 500, Sources: 100, PanicAt: batches / 5,
			PanicSource: receiverPanicSource, PanicInterval: 100 * time.Microsecond, Rate: float64(rate)}
		for _, name := range floodReceivers {
			b.Run(fmt.Sprintf("%s/%dk", name, rate/1000), func(b *testing.B) {
				var r receiverResult
				for range b.N {
					r = runReceiver(b, name, corpus, plan)
				}
				reportReceiver(b, r)
			})
		}
	}
}

func boolMetric(v bool) float64 {
	if v {
		return 1
	}
	return 0
}

// receiver is one receiver on the collector's end: run reads until ctx is
// done; handled returns how many frames it has handled so far.
type receiver struct {
	run     func(ctx context.Context, emit func(filter.Line)) error
	handled func() uint64
}

// drain waits until the receiver's count stops moving for 300 ms (at most
// 10 s), and then for the ring buffer reader's poll.
func (rcv receiver) drain() {
	last, still := rcv.handled(), 0
	for deadline := time.Now().Add(10 * time.Second); still < 6 && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
		if n := rcv.handled(); n != last {
			last, still = n, 0
		} else {
			still++
		}
	}
	time.Sleep(200 * time.Millisecond)
}

// runReceiver sets up a veth pair and the receiver name on its collector's
// end, runs the generator's plan from its node's end, waits for the
// receiver to drain, and returns what it saw.
func runReceiver(b *testing.B, name string, corpus *trafficgen.Corpus, plan trafficgen.Plan) receiverResult {
	b.StopTimer()
	pair := testnet.NewPair(b)
	plan.Dst = pair.Collector.IPv4
	rcv := newReceiver(b, name, pair)
	col := newCollected()
	ctx, cancel := context.WithCancel(b.Context())
	done := make(chan error, 1)
	go func() { done <- rcv.run(ctx, col.emit) }()

	b.StartTimer()
	st, err := trafficgen.RunFrom(pair.Node.Netns, pair.Node.Ifname, corpus, plan)
	b.StopTimer()
	if err != nil {
		cancel()
		b.Fatal(err)
	}
	rcv.drain()
	cancel()
	if err := <-done; err != nil {
		b.Fatalf("%s: %v", name, err)
	}
	drops, err := trafficgen.TxDropped(pair.Node.Netns, pair.Node.Ifname)
	if err != nil {
		b.Fatal(err)
	}
	col.mu.Lock()
	col.check(col.asm.Tick(time.Now().Add(time.Minute))) // close every incident
	_, detected := col.fatalLines[receiverPanicSource.Addr()]
	col.mu.Unlock()
	return receiverResult{
		offeredPPS: st.Offered(),
		sent:       st.Sent,
		received:   rcv.handled(),
		panicLines: col.lines[receiverPanicSource.Addr()],
		wantPanic:  len(panicForwarded(corpus)),
		detected:   detected,
		inFlood:    st.PanicInFlood,
		vethDrops:  drops,
	}
}

// newReceiver builds receiver name on pair's collector end.
func newReceiver(b *testing.B, name string, pair *testnet.Pair) receiver {
	coll := pair.Collector.Netns
	if name == "xdp" {
		prog := attachLastgasp(b, pair)
		rd, err := ringbuf.NewReader(prog.Events())
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { rd.Close() })
		return receiver{run: rd.Run, handled: func() uint64 {
			c, err := prog.Counters()
			if err != nil {
				b.Error(err)
			}
			return c.Netconsole
		}}
	}

	// The socket receivers: XDP_PASS on the collector's end, so that it
	// takes the generator's frames.
	pass, err := trafficgen.PassProgram()
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { pass.Close() })
	pair.Collector.AttachXDP(b, pass)
	// Every address of the namespace, IPv4 and IPv6 (a dual-stack
	// socket): the flood comes over both.
	addr := ":6666"

	return newSocketReceiver(b, name, coll, addr)
}

// newSocketReceiver builds the socket receiver name ("socket",
// "socket-64m" or "recvmmsg") on addr in coll, and nothing else there.
func newSocketReceiver(b *testing.B, name string, coll *testnet.Netns, addr string) receiver {
	if name == "recvmmsg" {
		// The product's socket mode: udpreceiver reads in batches of
		// up to 512 (recvmmsg), 64 MiB buffer.
		var r *udpreceiver.Receiver
		if err := coll.Do(func() (err error) {
			r, err = udpreceiver.Listen(b.Context(), addr, 64<<20, filter.New(filter.Config{}))
			return err
		}); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { r.Close() })
		return receiver{run: r.Run, handled: func() uint64 { return r.Counters().Datagrams }}
	}

	buf := 64 << 20
	if name == "socket" {
		// SO_RCVBUFFORCE is doubled by the kernel: half of
		// rmem_default is the default buffer.
		buf = rmemDefault(b, coll) / 2
	}
	var conn *net.UDPConn
	if err := coll.Do(func() (err error) {
		conn, err = listenForced(b.Context(), addr, buf)
		return err
	}); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { conn.Close() })
	var n atomic.Uint64
	return receiver{handled: n.Load, run: func(ctx context.Context, emit func(filter.Line)) error {
		return readOneByOne(ctx, conn, &n, emit)
	}}
}

// attachLastgasp loads lastgasp's XDP program (default configuration) and
// attaches it to pair's collector end, natively; both undone when b ends.
func attachLastgasp(b *testing.B, pair *testnet.Pair) *loader.Program {
	b.Helper()
	prog, err := loader.Load(loader.Config{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { prog.Close() })
	if err := pair.Collector.Netns.Do(func() error {
		_, err := prog.Attach(pair.Collector.Ifname, loader.ModeNative)
		return err
	}); err != nil {
		b.Fatal(err)
	}
	return prog
}

// rmemDefault reads net.core.rmem_default in ns.
func rmemDefault(b *testing.B, ns *testnet.Netns) int {
	var v int
	if err := ns.Do(func() error {
		raw, err := os.ReadFile("/proc/sys/net/core/rmem_default")
		if err != nil {
			return err
		}
		v, err = strconv.Atoi(strings.TrimSpace(string(raw)))
		return err
	}); err != nil {
		b.Fatal(err)
	}
	return v
}

// listenForced opens a UDP socket on addr with a receive buffer of size
// bytes (SO_RCVBUFFORCE, doubled by the kernel).
func listenForced(ctx context.Context, addr string, size int) (*net.UDPConn, error) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, size)
		})
		return errors.Join(err, serr)
	}}
	pc, err := lc.ListenPacket(ctx, "udp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", addr, err)
	}
	return pc.(*net.UDPConn), nil
}

// readOneByOne is the one-read-per-datagram receiver (Netflix Titus's
// design, and lastgasp's socket mode before it read in batches): one
// ReadFromUDP a datagram, each through filter.Filter, until ctx is done.
func readOneByOne(ctx context.Context, conn *net.UDPConn, n *atomic.Uint64, emit func(filter.Line)) error {
	stop := context.AfterFunc(ctx, func() { conn.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	f := filter.New(filter.Config{})
	buf := make([]byte, 64<<10)
	for {
		k, src, err := conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("read a datagram: %w", err)
		}
		n.Add(1)
		// An IPv4 source comes as ::ffff:a.b.c.d on a dual-stack
		// socket: as a.b.c.d, as udpreceiver does.
		src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
		if line, ok := f.Judge(src, buf[:k], time.Now()); ok {
			line.Payload = append([]byte(nil), line.Payload...)
			emit(line)
		}
	}
}
