package bench

import (
	"errors"
	"io"
	"log/slog"
	"os"
	"testing"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	cilium "github.com/cilium/ebpf/ringbuf"

	"github.com/lastgasp/lastgasp/bpf"
	"github.com/lastgasp/lastgasp/internal/testrig/packettest"
	"github.com/lastgasp/lastgasp/loader"
	"github.com/lastgasp/lastgasp/ringbuf"
)

// Netconsole lines, as a crashing kernel sends them.
const (
	ordinaryBasic    = "[    3.044631] RAX: 0000000000000000 RBX: ffff88f4c2b12410 RCX: 0000000000000000\n"
	ordinaryExtended = "4,416,3336464,-;RBP: ffffa8c1c0013e58 R08: 0000000000000000 R09: ffffa8c1c0013d08\n"
	matchingBasic    = "[    3.053091] Kernel panic - not syncing: Fatal exception\n"
)

// XDP verdicts.
const (
	xdpDrop = 1
	xdpPass = 2
)

const (
	// maxChunk bounds one BPF_PROG_TEST_RUN call (repeat is a uint32).
	maxChunk = 1 << 30
)

// recordSlot is what the record of a line of n payload bytes takes in
// the ring buffer: its head and payload (the program sizes records to the
// line) and the kernel's 8-byte header, rounded up to 8 bytes.
func recordSlot(n int) int {
	return (int(unsafe.Offsetof(bpf.LastgaspRecord{}.Payload)) + n + 8 + 7) &^ 7
}

// xdpCase is one path through the XDP program.
type xdpCase struct {
	name  string
	frame []byte
	cfg   loader.Config
	// empty runs a program that only returns XDP_PASS instead of
	// lastgasp's: the floor BPF_PROG_TEST_RUN itself costs.
	empty bool
	// prime, if set, is run primeRuns times before the timed runs (to
	// open a burst, or fill the ring buffer).
	prime     []byte
	primeRuns int
	// forwards: every timed run writes a record. The runs go in chunks
	// that leave the ring buffer below WakeBytes and below full, and the
	// ring is emptied between chunks with the timer stopped: no timed run
	// finds it full, and no context record forces a wakeup, as with a
	// reader that keeps up.
	forwards bool
	// verdict is the verdict every timed run must return.
	verdict uint32
	// perPacket are counters (C names) that every timed run must add
	// exactly this much to; the benchmark fails otherwise, so it cannot
	// silently measure another path.
	perPacket map[string]uint64
}

func xdpCases() []xdpCase {
	line := func(s string) []byte { return packettest.Line(s).Frame() }
	ordinary := map[string]uint64{"packets": 1, "netconsole": 1, "dropped": 1, "matched": 0, "context": 0}
	notOurs := map[string]uint64{"packets": 1, "passed": 1, "netconsole": 0, "malformed": 0}
	return []xdpCase{
		{
			name:    "empty-program",
			frame:   line(ordinaryBasic),
			empty:   true,
			verdict: xdpPass,
		},
		{
			name:      "not-netconsole-udp53",
			frame:     packettest.UDP{DstPort: 53, Payload: []byte("\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example\x03com\x00\x00\x01\x00\x01")}.Frame(),
			verdict:   xdpPass,
			perPacket: notOurs,
		},
		{
			// The IP protocol is TCP: the program stops at the IPv4
			// header and never reads what follows it.
			name:      "not-netconsole-tcp",
			frame:     packettest.UDP{Protocol: packettest.ProtoTCP, DstPort: 443, Payload: make([]byte, 40)}.Frame(),
			verdict:   xdpPass,
			perPacket: notOurs,
		},
		{
			name:      "ordinary-basic",
			frame:     line(ordinaryBasic),
			verdict:   xdpDrop,
			perPacket: ordinary,
		},
		{
			name:      "ordinary-extended",
			frame:     line(ordinaryExtended),
			verdict:   xdpDrop,
			perPacket: ordinary,
		},
		{
			name:      "ordinary-ipv6-vlan",
			frame:     packettest.UDP{Src: packettest.NodeV6, VLANs: []uint16{100}, Payload: []byte(ordinaryBasic)}.Frame(),
			verdict:   xdpDrop,
			perPacket: ordinary,
		},
		{
			// A match always wakes the reader; WakeBytes only lets the
			// chunks of runs fill the ring (see forwards).
			name:      "matching",
			frame:     line(matchingBasic),
			cfg:       loader.Config{WakeBytes: loader.DefaultRingBufSize},
			forwards:  true,
			verdict:   xdpDrop,
			perPacket: map[string]uint64{"matched": 1, "bursts": 1, "dropped": 1, "ringbuf_full": 0},
		},
		{
			// One match opens a burst that outlasts the benchmark; every
			// timed line is then context. WakeBytes as the ring size
			// lets a chunk of runs fill the ring (see forwards) without a
			// context record ever forcing a wakeup.
			name:  "context",
			frame: line(ordinaryBasic),
			cfg: loader.Config{
				ContextLines: 1 << 30,
				BurstTimeout: 24 * time.Hour,
				WakeBytes:    loader.DefaultRingBufSize,
			},
			prime:     line(matchingBasic),
			primeRuns: 1,
			forwards:  true,
			verdict:   xdpDrop,
			perPacket: map[string]uint64{"context": 1, "matched": 0, "dropped": 1, "ringbuf_full": 0},
		},
		{
			// A one-page ring buffer, filled before the timed runs and
			// never read: what a match costs when the reader falls behind.
			name:      "matching-ring-full",
			frame:     line(matchingBasic),
			cfg:       loader.Config{RingBufSize: uint32(os.Getpagesize())},
			prime:     line(matchingBasic),
			primeRuns: os.Getpagesize()/recordSlot(len(matchingBasic)) + 1,
			verdict:   xdpPass,
			perPacket: map[string]uint64{"matched": 1, "ringbuf_full": 1, "passed": 1},
		},
	}
}

// BenchmarkXDP runs the XDP program with BPF_PROG_TEST_RUN: b.N runs of
// one frame in the kernel, in as few syscalls as possible.
func BenchmarkXDP(b *testing.B) {
	for _, c := range xdpCases() {
		b.Run(c.name, func(b *testing.B) { runXDP(b, c) })
	}
}

func runXDP(b *testing.B, c xdpCase) {
	prog, lp := loadXDP(b, c)
	var rd *cilium.Reader
	if c.forwards {
		var err error
		if rd, err = cilium.NewReader(lp.Events()); err != nil {
			b.Fatal(err)
		}
		defer rd.Close()
	}
	if c.prime != nil {
		if _, _, err := prog.Benchmark(c.prime, c.primeRuns, nil); err != nil {
			b.Fatal(err)
		}
		if c.forwards {
			drain(b, rd)
		}
	}
	before := counters(b, lp)

	chunk := maxChunk
	if c.forwards {
		cfg := lp.Config()
		chunk = int(min(cfg.RingBufSize, cfg.WakeBytes))/recordSlot(len(packettest.UDPPayload(c.frame))) - 1
	}
	var kernel time.Duration // sum over the runs of the kernel's time
	read := 0                // records read from the ring buffer
	emptyRing := func() {
		if c.forwards {
			b.StopTimer()
			read += drain(b, rd)
			b.StartTimer()
		}
	}
	// A signal makes BPF_PROG_TEST_RUN stop early with EINTR; cilium/ebpf
	// then calls this and runs the whole chunk again. Emptying the ring
	// first gives the rerun the same start as any chunk.
	interrupted := 0
	reset := func() { interrupted++; emptyRing() }
	b.ResetTimer()
	for done := 0; done < b.N; {
		n := min(b.N-done, chunk)
		verdict, mean, err := prog.Benchmark(c.frame, n, reset)
		if err != nil {
			b.Fatal(err)
		}
		if verdict != c.verdict {
			b.Fatalf("verdict %d, want %d", verdict, c.verdict)
		}
		kernel += mean * time.Duration(n)
		done += n
		emptyRing()
	}
	b.StopTimer()
	b.ReportMetric(float64(kernel.Nanoseconds())/float64(b.N), "ns/pkt")
	if lp == nil {
		return
	}

	// Check the runs took the path the case is named for. runs exceeds
	// b.N by the runs an interrupted call made before it was redone.
	after := counters(b, lp)
	delta := func(name string) uint64 { return after[name] - before[name] }
	runs := delta("packets")
	if interrupted > 0 {
		b.Logf("%d calls interrupted by a signal and redone: %d runs for b.N = %d", interrupted, runs, b.N)
	}
	for name, per := range c.perPacket {
		if got, want := delta(name), per*runs; got != want {
			b.Fatalf("counter %s grew by %d in %d runs, want %d", name, got, runs, want)
		}
	}
	if c.forwards && uint64(read) != delta("matched")+delta("context")-delta("ringbuf_full") {
		b.Fatalf("read %d records, the program forwarded %d", read, delta("matched")+delta("context")-delta("ringbuf_full"))
	}
	b.ReportMetric(float64(delta("ringbuf_full"))/float64(runs), "ringbuf_full/pkt")
}

// loadXDP loads the program c runs: lastgasp's (also returned as a
// loader.Program, for its maps and counters) or the empty one.
func loadXDP(b *testing.B, c xdpCase) (*ebpf.Program, *loader.Program) {
	b.Helper()
	if c.empty {
		prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
			Type:         ebpf.XDP,
			Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, xdpPass), asm.Return()},
			License:      "GPL",
		})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { prog.Close() })
		return prog, nil
	}
	cfg := c.cfg
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	lp, err := loader.Load(cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { lp.Close() })
	return lp.XDP(), lp
}

// counters returns the program's counters by C name (nil for the empty
// program), failing b on error: counterValues for the benchmark's own
// goroutine.
func counters(b *testing.B, lp *loader.Program) map[string]uint64 {
	b.Helper()
	m, err := counterValues(lp)
	if err != nil {
		b.Fatal(err)
	}
	return m
}

// counterValues returns the program's counters by C name (nil for the
// empty program), for goroutines where b.Fatal must not be called.
func counterValues(lp *loader.Program) (map[string]uint64, error) {
	if lp == nil {
		return nil, nil
	}
	c, err := lp.Counters()
	if err != nil {
		return nil, err
	}
	m := make(map[string]uint64)
	for _, nc := range loader.CounterValues(c) {
		m[nc.Name] = nc.Value
	}
	return m, nil
}

// drain reads every record waiting in the ring buffer, checks that each
// decodes, and returns how many it read.
func drain(b *testing.B, rd *cilium.Reader) int {
	b.Helper()
	stamp := func(uint64) time.Time { return time.Time{} }
	var rec cilium.Record
	n := 0
	rd.SetDeadline(time.Now())
	for {
		err := rd.ReadInto(&rec)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return n
		}
		if err != nil {
			b.Fatal(err)
		}
		if _, err := ringbuf.Decode(rec.RawSample, stamp); err != nil {
			b.Fatal(err)
		}
		n++
	}
}
