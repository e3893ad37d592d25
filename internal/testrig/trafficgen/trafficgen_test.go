package trafficgen_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"github.com/lastgasp/lastgasp/internal/filter"
	"github.com/lastgasp/lastgasp/internal/testrig/packettest"
	"github.com/lastgasp/lastgasp/internal/testrig/testnet"
	"github.com/lastgasp/lastgasp/internal/testrig/trafficgen"
	"github.com/lastgasp/lastgasp/loader"
	"github.com/lastgasp/lastgasp/ringbuf"
)

// panicSource is the known source of the injected panic, outside the
// ordinary sources' 10.128.0.0/9.
var panicSource = netip.MustParseAddrPort("10.99.0.2:6665")

// ExpectedPanicLines returns the panic lines a collector forwards when the
// panic arrives alone from one source: the Go twin of the XDP program
// (filter.Filter, default configuration) run over them.
func expectedPanicLines(c *trafficgen.Corpus) [][]byte {
	f := filter.New(filter.Config{})
	var want [][]byte
	now := time.Now()
	for _, p := range c.Panic {
		if _, ok := f.Judge(panicSource, p, now); ok {
			want = append(want, p)
		}
	}
	return want
}

// TestLiveFramesReachCollectorXDP sends 200,000 ordinary frames from
// 100,000 sources, half of them over IPv6, and the real panic in the middle (from the same thread: one
// sender, so the veth ring does not overflow), through the in-kernel
// generator, into a veth whose peer runs lastgasp's XDP program. The
// program must count every frame as netconsole (none lost between the
// generator and it: the generator waits on the test-run call, and the
// collector's NAPI runs on the generator's CPU as it flushes), and
// forward exactly the panic's lines a collector forwards, in order, from
// the panic's source.
func TestLiveFramesReachCollectorXDP(t *testing.T) {
	pair := testnet.NewPair(t)
	corpus, err := trafficgen.LoadCorpus("../../../testdata/netconsole")
	if err != nil {
		t.Fatal(err)
	}
	prog, rd := attachCollector(t, pair)

	plan := trafficgen.Plan{
		Dst: pair.Collector.IPv4, DstV6: pair.Collector.IPv6, IPv6Share: 0.5,
		Batches: 40, Repeat: 5000, Sources: 100_000,
		PanicAt: 20, PanicSource: panicSource, PanicInline: true,
	}
	st, err := trafficgen.RunFrom(pair.Node.Netns, pair.Node.Ifname, corpus, plan)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("sent %d ordinary and %d panic frames in %v: %.0f frames/s", st.Ordinary, st.Panic, st.Elapsed, st.Offered())
	if st.Ordinary != 200_000 || st.Panic != uint64(len(corpus.Panic)) {
		t.Fatalf("sent %d ordinary and %d panic frames, want 200000 and %d", st.Ordinary, st.Panic, len(corpus.Panic))
	}

	want := expectedPanicLines(corpus)
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	for i, w := range want {
		line, err := rd.Read(ctx)
		if err != nil {
			t.Fatalf("panic line %d of %d not forwarded: %v", i, len(want), err)
		}
		if line.Source != panicSource || !bytes.Equal(line.Payload, w) {
			t.Fatalf("forwarded line %d: %v %q, want %v %q", i, line.Source, line.Payload, panicSource, w)
		}
	}
	c, err := prog.Counters()
	if err != nil {
		t.Fatal(err)
	}
	// A signal may have made a call start again: the generator's own
	// count (Sent) is what went out, at least what was asked for.
	if st.Sent < st.Ordinary+st.Panic {
		t.Errorf("the generator counted %d frames sent, fewer than the %d asked for", st.Sent, st.Ordinary+st.Panic)
	}
	// Every frame sent is either counted by the collector's program or
	// dropped in its veth ring (256 frames), which the node's end counts
	// as TX drops; with one sender, whose CPU also runs the collector's
	// NAPI as it flushes, there are none or few.
	dropped, err := trafficgen.TxDropped(pair.Node.Netns, pair.Node.Ifname)
	if err != nil {
		t.Fatal(err)
	}
	// (The node's own stack may add a drop of its own to that count.)
	if c.Netconsole > st.Sent || c.Netconsole+dropped < st.Sent {
		t.Errorf("the collector's program counted %d netconsole packets and the veth dropped %d, want the %d sent", c.Netconsole, dropped, st.Sent)
	}
	if dropped > st.Sent/10 {
		t.Errorf("the veth dropped %d of %d frames: the collector's program fell far behind", dropped, st.Sent)
	}
	t.Logf("veth ring drops: %d", dropped)
	if fwd := c.Matched + c.Context; fwd != uint64(len(want)) {
		t.Errorf("the program forwarded %d lines (matched %d, context %d), want the panic's %d", fwd, c.Matched, c.Context, len(want))
	}
}

// attachCollector loads lastgasp's XDP program (a 1 MiB ring buffer),
// attaches it to pair's collector end and opens its ring buffer.
func attachCollector(t *testing.T, pair *testnet.Pair) (*loader.Program, *ringbuf.Reader) {
	t.Helper()
	prog, err := loader.Load(loader.Config{RingBufSize: 1 << 20, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { prog.Close() })
	if err := pair.Collector.Netns.Do(func() error {
		_, err := prog.Attach(pair.Collector.Ifname, loader.ModeNative)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	rd, err := ringbuf.NewReader(prog.Events())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rd.Close() })
	return prog, rd
}

// TestTimedPlanSendsPanicsFromDistinctSources runs a timed plan (a flood
// for 400 ms, paced at 100,000 frames/s, three panics at known times from
// three sources) into lastgasp's XDP program, sent by one thread and by
// two (Plan.Threads, on a pair with two queues): each panic must arrive
// whole from its own source, PanicSourceN(k), and the stats must count
// every frame the generator's program sent, whichever thread sent it.
func TestTimedPlanSendsPanicsFromDistinctSources(t *testing.T) {
	corpus, err := trafficgen.LoadCorpus("../../../testdata/netconsole")
	if err != nil {
		t.Fatal(err)
	}
	for _, threads := range []int{1, 2} {
		t.Run(fmt.Sprintf("threads=%d", threads), func(t *testing.T) {
			pair := testnet.NewPairQueues(t, threads)
			_, rd := attachCollector(t, pair)
			plan := trafficgen.Plan{
				Dst: pair.Collector.IPv4, Repeat: 100, Sources: 10, Rate: 100_000,
				Duration: 400 * time.Millisecond, Panics: 3, PanicSource: panicSource,
				Threads: threads,
			}
			st, err := trafficgen.RunFrom(pair.Node.Netns, pair.Node.Ifname, corpus, plan)
			if err != nil {
				t.Fatal(err)
			}
			if st.Panics != 3 || len(st.PanicTimes) != 3 || st.Panic != uint64(3*len(corpus.Panic)) {
				t.Fatalf("stats: %d panics at %v, %d panic frames; want 3 panics, %d frames", st.Panics, st.PanicTimes, st.Panic, 3*len(corpus.Panic))
			}
			if st.Ordinary+st.Panic != st.Sent {
				t.Errorf("stats: %d ordinary and %d panic frames counted, the program sent %d", st.Ordinary, st.Panic, st.Sent)
			}
			want := len(expectedPanicLines(corpus))
			got := map[netip.AddrPort]int{}
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
			defer cancel()
			for range 3 * want {
				line, err := rd.Read(ctx)
				if err != nil {
					t.Fatalf("after %v: %v", got, err)
				}
				got[line.Source]++
			}
			for k := range 3 {
				if src := plan.PanicSourceN(k); got[src] != want {
					t.Errorf("panic %d from %v: %d lines forwarded, want %d (all: %v)", k, src, got[src], want, got)
				}
			}
		})
	}
}

// TestSendCallsAreCheap makes 100 calls of 64 frames each: with the
// program kept in the kernel's XDP dispatcher (OnInterface), a call costs
// microseconds; without, each one rewrote the dispatcher twice, about 25
// ms on this VM. The bound, 2 ms a call on average, leaves room for load.
func TestSendCallsAreCheap(t *testing.T) {
	pair := passingPair(t)
	frame := packettest.UDP{Src: packettest.NodeV4, Dst: pair.Collector.IPv4, Payload: []byte("6,1,2,-;a line\n")}.Frame()
	var took time.Duration
	if err := trafficgen.OnInterface(pair.Node.Netns, pair.Node.Ifname, func(r *trafficgen.Redirector) error {
		start := time.Now()
		for range 100 {
			if err := r.Send(frame, 64); err != nil {
				return err
			}
		}
		took = time.Since(start)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("100 calls of 64 frames: %v, %v a call", took, took/100)
	if took > 200*time.Millisecond {
		t.Errorf("100 calls of 64 frames took %v: more than 2 ms a call", took)
	}
}
