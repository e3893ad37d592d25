package bench

import (
	"context"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lastgasp/lastgasp/internal/detect"
	"github.com/lastgasp/lastgasp/internal/filter"
	"github.com/lastgasp/lastgasp/internal/testrig/benchenv"
	"github.com/lastgasp/lastgasp/internal/testrig/testnet"
	"github.com/lastgasp/lastgasp/internal/testrig/trafficgen"
)

// floodReceivers are the receivers of scenario 1, in the order of the rows.
var floodReceivers = []string{"xdp", "socket", "socket-64m", "recvmmsg"}

// floodLoad is what one receiver did under one load: the fields of an
// ordinary_only row, and the first of a flood row.
type floodLoad struct {
	Receiver    string  `json:"receiver"`
	Feed        string  `json:"feed"` // feedLive or feedSendmmsg
	OfferedPPS  float64 `json:"offered_pps"`
	HandledPPS  float64 `json:"handled_pps"`
	KernelDrops uint64  `json:"kernel_drops"`
	CPUUserS    float64 `json:"cpu_user_s"`
	CPUSysS     float64 `json:"cpu_sys_s"`
	DurationS   float64 `json:"duration_s"`
}

// floodRow is one row of flood.json's rows: one receiver at one offered
// rate, with panics injected.
type floodRow struct {
	floodLoad
	PanicsSent         int `json:"panics_sent"`
	PanicsDetected     int `json:"panics_detected"`
	PanicLinesSent     int `json:"panic_lines_sent"`
	PanicLinesReceived int `json:"panic_lines_received"`
}

// floodResults is flood.json.
type floodResults struct {
	Machine      string      `json:"machine"`
	Kernel       string      `json:"kernel"`
	Rows         []floodRow  `json:"rows"`
	OrdinaryOnly []floodLoad `json:"ordinary_only"`
}

// floodConfig is the size of a run: short (make bench-flood) or full
// (BENCH_FULL=1).
type floodConfig struct {
	rates    []float64 // offered rates asked for; 0 is the generator's top rate, unpaced
	duration time.Duration
	panics   int
}

func floodConfigFromEnv() floodConfig {
	if os.Getenv("BENCH_FULL") != "" {
		return floodConfig{
			rates:    []float64{25e3, 50e3, 100e3, 200e3, 300e3, 400e3, 600e3, 800e3, 1.2e6, 1.6e6, 2.4e6, 3.2e6, 4.8e6, 0},
			duration: 10 * time.Second,
			panics:   50,
		}
	}
	// Up to 3.2 Mpps paced: the generator keeps the rate asked (its
	// calls cost microseconds), and xdp's last lossless rate lies
	// between 800 kpps and the top rate, where the veth ring before the
	// program, not the program, starts to drop.
	return floodConfig{rates: []float64{50e3, 100e3, 200e3, 400e3, 800e3, 1.6e6, 3.2e6, 0}, duration: 2 * time.Second, panics: 20}
}

// BenchmarkFlood is issue 16's scenario 1, all in one invocation: for each
// offered rate (paced by the in-kernel generator, the last unpaced at its
// top rate) and each receiver, a fresh veth pair, a flood of ordinary lines
// from floodSources sources (the generator's program writes each frame's
// source), half the batches over IPv6, for a fixed duration, and panics (the real
// null-oops-panic capture, every frame) from distinct known sources at
// known times inside it; then, for each receiver, the same flood at the top
// rate with no panic (ordinary_only). The socket receivers then get the
// same rows fed by the sendmmsg sender (feedSendmmsg, at mmsgRates) as
// well, each row saying its feed. It writes flood.json, flood.md and
// the plots to $FLOOD_OUT (default results/, that is bench/results). See
// bench/README.md for how to read them.
//
// A panic is detected when the detect.Assembler fed by the receiver closes
// a fatal incident from its source with every line it has when that panic
// arrives alone (the Go twin of the program forwarding them). CPU is the
// receiver's own thread's (getrusage RUSAGE_THREAD): the receiver's loop
// and the filter and assembler it feeds run on one goroutine locked to it.
func BenchmarkFlood(b *testing.B) {
	corpus, err := trafficgen.LoadCorpus("../testdata/netconsole")
	if err != nil {
		b.Fatal(err)
	}
	cfg := floodConfigFromEnv()
	res := floodResults{Machine: benchenv.Machine(), Kernel: benchenv.Kernel()}
	loadStart := benchenv.LoadAverage()
	for range b.N {
		res.Rows, res.OrdinaryOnly = nil, nil
		for _, rate := range cfg.rates {
			for _, name := range floodReceivers {
				row := runFlood(b, name, feedLive, corpus, floodPlan(rate, cfg.duration, cfg.panics))
				b.Logf("%s at %.0f pps asked: %+v", name, rate, row)
				res.Rows = append(res.Rows, row)
			}
		}
		for _, rate := range mmsgRates() {
			for _, name := range mmsgReceivers {
				row := runFlood(b, name, feedSendmmsg, corpus, mmsgPlan(rate, cfg.duration, cfg.panics))
				b.Logf("%s fed by sendmmsg at %.0f pps asked: %+v", name, rate, row)
				res.Rows = append(res.Rows, row)
			}
		}
		for _, name := range floodReceivers {
			row := runFlood(b, name, feedLive, corpus, floodPlan(0, cfg.duration, 0))
			b.Logf("%s ordinary only: %+v", name, row.floodLoad)
			res.OrdinaryOnly = append(res.OrdinaryOnly, row.floodLoad)
		}
		for _, name := range mmsgReceivers {
			row := runFlood(b, name, feedSendmmsg, corpus, mmsgPlan(0, cfg.duration, 0))
			b.Logf("%s fed by sendmmsg, ordinary only: %+v", name, row.floodLoad)
			res.OrdinaryOnly = append(res.OrdinaryOnly, row.floodLoad)
		}
	}
	out := os.Getenv("FLOOD_OUT")
	if out == "" {
		out = "results"
	}
	if err := writeFloodResults(out, res, cfg, loadStart, benchenv.LoadAverage()); err != nil {
		b.Fatal(err)
	}
}

// floodSources is how many sources the flood's ordinary lines come from,
// each family: issue 16's most. The panics' sources (10.99.0.2, .3, …)
// are not among them.
const floodSources = 100_000

// floodPlan is the generator's plan for one row: rate 0 is unpaced. The
// calls of BPF_PROG_TEST_RUN are kept to about 300 a second: each carries
// rate/300 frames (at least 100), a burst at the kernel's speed. (A call
// cost about a millisecond besides its frames, more under load, until the
// generator kept its program in the XDP dispatcher; now tens of µs.)
func floodPlan(rate float64, d time.Duration, panics int) trafficgen.Plan {
	// The top rate, unpaced: a flood thread a CPU (the pair has a queue
	// a CPU), so that one CPU's generator is not what limits XDP.
	repeat, threads := uint32(10_000), runtime.NumCPU()
	if rate > 0 {
		repeat, threads = uint32(max(100, rate/300)), 1
	}
	return trafficgen.Plan{Repeat: repeat, Sources: floodSources, IPv6Share: 0.5, Rate: rate, Duration: d, Panics: panics,
		PanicSource: receiverPanicSource, PanicInterval: 100 * time.Microsecond, Threads: threads}
}

// collected gathers what a receiver forwards, for the receiver and flood
// benchmarks alike: every line through a detect.Assembler, the lines of
// each source counted, and for each source that had a fatal incident the
// most lines one of them held (a source is a key only once it had one).
// The receiver benchmarks count their panic detected once its source is
// a key of fatalLines; the flood benchmark only when the incident holds
// as many lines as the panic alone gives (panicAlone). emit may be called
// from several goroutines.
type collected struct {
	mu         sync.Mutex
	asm        *detect.Assembler
	lines      map[netip.Addr]int
	fatalLines map[netip.Addr]int
}

func newCollected() *collected {
	return &collected{
		asm:        detect.NewAssembler(detect.Budget(detect.DefaultMemoryBudget)),
		lines:      map[netip.Addr]int{},
		fatalLines: map[netip.Addr]int{},
	}
}

func (c *collected) emit(l filter.Line) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.lines[l.Source.Addr()]++
	c.check(c.asm.Line(l))
}

func (c *collected) check(incs []detect.Incident) {
	for _, inc := range incs {
		if inc.Fatal {
			c.fatalLines[inc.Source] = max(c.fatalLines[inc.Source], len(inc.Lines))
		}
	}
}

// panicForwarded returns the lines the filter forwards of the corpus's
// panic when it arrives alone from receiverPanicSource: the Go twin of
// the XDP program run over them, what a collector must deliver.
func panicForwarded(c *trafficgen.Corpus) []filter.Line {
	f := filter.New(filter.Config{})
	var lines []filter.Line
	for _, p := range c.Panic {
		if line, ok := f.Judge(receiverPanicSource, p, time.Now()); ok {
			lines = append(lines, line)
		}
	}
	return lines
}

// panicAlone returns how many lines the filter forwards of one panic that
// arrives alone (panicForwarded), and how many lines the assembler's
// incident then has: what a receiver must deliver for the panic to count
// as detected.
func panicAlone(b *testing.B, c *trafficgen.Corpus) (forwarded, incidentLines int) {
	col := newCollected()
	lines := panicForwarded(c)
	for _, line := range lines {
		col.emit(line)
	}
	col.check(col.asm.Tick(time.Now().Add(time.Minute)))
	incidentLines = col.fatalLines[receiverPanicSource.Addr()]
	if incidentLines == 0 {
		b.Fatal("the panic alone gives no fatal incident")
	}
	return len(lines), incidentLines
}

// runFlood runs one row: receiver name on a fresh pair, the plan sent
// from the node's end by feed, the receiver drained, its thread's CPU
// time read.
func runFlood(b *testing.B, name, feed string, corpus *trafficgen.Corpus, plan trafficgen.Plan) floodRow {
	b.StopTimer()
	defer b.StartTimer()
	// A queue a CPU, as a NIC's receive queues: the flood's thread and
	// the panics' thread do not share one veth ring (testnet.NewPairQueues).
	pair := testnet.NewPairQueues(b, runtime.NumCPU())
	plan.Dst, plan.DstV6 = pair.Collector.IPv4, pair.Collector.IPv6
	rcv := floodReceiver(b, name, feed, pair)
	col := newCollected()
	ctx, cancel := context.WithCancel(b.Context())
	defer cancel()
	type ran struct {
		err       error
		user, sys time.Duration
	}
	done := make(chan ran, 1)
	go func() {
		// The receiver's own thread: its CPU time is the row's.
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		var before, after unix.Rusage
		_ = unix.Getrusage(unix.RUSAGE_THREAD, &before)
		err := rcv.run(ctx, col.emit)
		_ = unix.Getrusage(unix.RUSAGE_THREAD, &after)
		done <- ran{err: err,
			user: time.Duration(after.Utime.Nano() - before.Utime.Nano()),
			sys:  time.Duration(after.Stime.Nano() - before.Stime.Nano())}
	}()

	st, err := sendFeed(feed, pair, corpus, plan)
	if err != nil {
		b.Fatal(err)
	}
	rcv.drain()
	cancel()
	r := <-done
	if r.err != nil {
		b.Fatalf("%s: %v", name, r.err)
	}
	vethDrops, err := trafficgen.TxDropped(pair.Node.Netns, pair.Node.Ifname)
	if err != nil {
		b.Fatal(err)
	}
	sockDrops := udpRcvbufErrors(b, pair.Collector.Netns)
	col.mu.Lock()
	defer col.mu.Unlock()
	col.check(col.asm.Tick(time.Now().Add(time.Minute))) // close every incident

	row := floodRow{floodLoad: floodLoad{
		Receiver:    name,
		Feed:        feed,
		OfferedPPS:  st.Offered(),
		HandledPPS:  float64(rcv.handled()) / st.Elapsed.Seconds(),
		KernelDrops: vethDrops + sockDrops,
		CPUUserS:    r.user.Seconds(),
		CPUSysS:     r.sys.Seconds(),
		DurationS:   st.Elapsed.Seconds(),
	}}
	if st.Panics == 0 {
		return row
	}
	forwarded, incidentLines := panicAlone(b, corpus)
	row.PanicsSent = st.Panics
	row.PanicLinesSent = st.Panics * forwarded
	for k := range st.Panics {
		src := plan.PanicSourceN(k).Addr()
		row.PanicLinesReceived += col.lines[src]
		if col.fatalLines[src] >= incidentLines {
			row.PanicsDetected++
		}
	}
	return row
}

// udpRcvbufErrors returns the datagrams ns's UDP sockets dropped for a
// full buffer, over IPv4 (UdpRcvbufErrors) and IPv6 (Udp6RcvbufErrors: a
// dual-stack socket's IPv6 drops are counted there alone).
func udpRcvbufErrors(b *testing.B, ns *testnet.Netns) uint64 {
	c, err := ns.Counters()
	if err != nil {
		b.Fatal(err)
	}
	return c["UdpRcvbufErrors"] + c["Udp6RcvbufErrors"]
}
