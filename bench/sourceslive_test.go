package bench

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	cilium "github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"

	"github.com/lastgasp/lastgasp/internal/testrig/packettest"
	"github.com/lastgasp/lastgasp/internal/testrig/testnet"
	"github.com/lastgasp/lastgasp/internal/testrig/trafficgen"
	"github.com/lastgasp/lastgasp/loader"
)

// Scenario 2 through the live generator: the sizes of a run.
const (
	// liveSamples is how many frames each of hit and miss sends.
	liveSamples = 200_000
	// liveLinesPerBurst is the most context lines a source gets before
	// its burst is extended by another panic line: within burst_lines
	// (256), so that every hit frame finds its burst open.
	liveLinesPerBurst = 200
	// liveChunk is the most frames one BPF_PROG_TEST_RUN call sends.
	liveChunk = 1_000_000
)

// runSourcesLive is scenario 2 through the live generator, for one family
// and n sources: a fresh veth pair with lastgasp's program attached to the
// collector's end and a reader draining its ring buffer; the n bursts
// opened by a panic line from each source (the generator rotating over
// the n); then a flood at the generator's top rate of the first context
// line from those n sources (hit: found in the LRU, a record written),
// the bursts extended by another panic line from each after every
// liveLinesPerBurst lines a source, and of an ordinary line from n other
// sources (miss). The row's time is the program's own (BPF stats: run
// time over run count) over the measured flood's calls only.
func runSourcesLive(b *testing.B, family string, n int) (hit, miss sourcesRow) {
	b.StopTimer()
	defer b.StartTimer()
	defer enableRunTimeStats(b).Close()
	pair := testnet.NewPair(b)
	lp := attachLastgasp(b, pair)
	rd, err := cilium.NewReader(lp.Events())
	if err != nil {
		b.Fatal(err)
	}
	read := make(chan error, 1)
	go func() { read <- consume(rd) }()
	defer func() {
		rd.Close()
		if err := <-read; err != nil {
			b.Error(err)
		}
	}()

	// The open sources and the others: the frames are built with
	// rotation 0's source, so n = 1 (no rotation) sends from it too.
	open, other := trafficgen.Source(0).Addr(), netip.MustParseAddr("10.130.0.0")
	dst := pair.Collector.IPv4
	if family == "ipv6" {
		open, other, dst = trafficgen.SourceV6(0).Addr(), trafficgen.RotatedSource(netip.MustParseAddr("fd00:130::"), 0), pair.Collector.IPv6
	}
	frame := func(src netip.Addr, line string) []byte {
		return packettest.UDP{Src: src, Dst: dst, Payload: []byte(line), UDPChecksum: src.Is6()}.Frame()
	}
	panicLine, hitLine, missLine := frame(open, matchingBasic), frame(open, ordinaryBasic), frame(other, ordinaryBasic)

	perBurst := min(liveLinesPerBurst, (liveSamples+n-1)/n)
	rounds := max(1, liveSamples/(n*perBurst))
	hit = sourcesRow{Method: "live", Family: family, Sources: n, Path: "hit"}
	miss = sourcesRow{Method: "live", Family: family, Sources: n, Path: "miss"}
	err = trafficgen.OnInterface(pair.Node.Netns, pair.Node.Ifname, func(gen *trafficgen.Redirector) error {
		m := &liveMeter{prog: lp.XDP(), lp: lp, gen: gen}
		for range rounds {
			// Open (or extend) every source's burst: not measured.
			if err := m.send(panicLine, n, n, nil); err != nil {
				return err
			}
			if err := m.send(hitLine, n*perBurst, n, &hit); err != nil {
				return err
			}
		}
		return m.send(missLine, rounds*n*perBurst, n, &miss)
	})
	if err != nil {
		b.Fatal(err)
	}
	return hit, miss
}

// runEmptyLive measures the live floor: an XDP program that only drops,
// attached to the collector's end, its run time over liveSamples frames
// from the generator. BPF stats time each run (two clock reads around it),
// which the floor includes, as every live row does.
func runEmptyLive(b *testing.B) sourcesRow {
	b.StopTimer()
	defer b.StartTimer()
	defer enableRunTimeStats(b).Close()
	pair := testnet.NewPair(b)
	drop, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:         ebpf.XDP,
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 1 /* XDP_DROP */), asm.Return()},
		License:      "GPL",
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { drop.Close() })
	pair.Collector.AttachXDP(b, drop)
	row := sourcesRow{Method: "live", Family: "ipv4", Path: "empty-program"}
	frame := packettest.UDP{Dst: pair.Collector.IPv4, Payload: []byte(ordinaryBasic)}.Frame()
	if err := trafficgen.OnInterface(pair.Node.Netns, pair.Node.Ifname, func(gen *trafficgen.Redirector) error {
		m := &liveMeter{prog: drop, gen: gen}
		return m.send(frame, liveSamples, 1, &row)
	}); err != nil {
		b.Fatal(err)
	}
	return row
}

// enableRunTimeStats makes the kernel time every BPF program run
// (BPF_ENABLE_STATS) until the returned closer is closed: the live rows'
// figures. Only around them: it adds two clock reads to every run of every
// program, the test-run rows' included.
func enableRunTimeStats(b *testing.B) io.Closer {
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		b.Fatalf("enable BPF run time statistics: %v", err)
	}
	return stats
}

// liveMeter sends a phase of frames through the generator and, if asked,
// adds the program's runs and run time over it to a row.
type liveMeter struct {
	prog *ebpf.Program   // the program measured
	lp   *loader.Program // lastgasp's, for its counters (nil: none)
	gen  *trafficgen.Redirector
}

// liveStats are the program's cumulative figures at one moment.
type liveStats struct {
	runs, sent, drops, context, full uint64
	runtime                          time.Duration
}

// read returns the program's cumulative figures now.
func (m *liveMeter) read() (liveStats, error) {
	st, err := m.prog.Stats()
	if err != nil {
		return liveStats{}, fmt.Errorf("read the program's run time (BPF_ENABLE_STATS): %w", err)
	}
	// counterValues, not counters(): this runs in the generator's
	// namespace, on a goroutine of its own, where b.Fatal must not be
	// called.
	c, err := counterValues(m.lp)
	if err != nil {
		return liveStats{}, err
	}
	sent, err := m.gen.Sent()
	if err != nil {
		return liveStats{}, err
	}
	return liveStats{runs: st.RunCount, runtime: st.Runtime, sent: sent, context: c["context"], full: c["ringbuf_full"]}, nil
}

// send sends frame repeat times rotated over n sources, in calls of at
// most liveChunk frames, waits until the program has run on every frame
// that was not dropped before it, and adds what it measured to row (nil:
// not measured).
func (m *liveMeter) send(frame []byte, repeat, n int, row *sourcesRow) error {
	before, err := m.read()
	if err != nil {
		return err
	}
	for done := 0; done < repeat; done += liveChunk {
		if err := m.gen.SendFrom(frame, uint32(min(liveChunk, repeat-done)), n); err != nil {
			return err
		}
	}
	// The collector's NAPI runs on the sending CPU as each batch is
	// flushed: the program has run on nearly every frame by now. Wait
	// for the rest, until the count stops moving.
	after, err := m.read()
	if err != nil {
		return err
	}
	for still := 0; after.runs-before.runs < after.sent-before.sent && still < 3; {
		time.Sleep(200 * time.Microsecond)
		next, err := m.read()
		if err != nil {
			return err
		}
		if next.runs == after.runs {
			still++
		}
		after = next
	}
	if row == nil {
		return nil
	}
	// What the generator sent and the program never ran on was dropped
	// in the veth ring (a stray frame of the node's own may run it
	// once more).
	if sent, runs := after.sent-before.sent, after.runs-before.runs; sent > runs {
		row.VethDrops += sent - runs
	}
	row.Samples += int(after.runs - before.runs)
	row.Found += int(after.context - before.context)
	row.RingbufFull += after.full - before.full
	row.runtime += after.runtime - before.runtime
	row.NsPerPacket = float64(row.runtime.Nanoseconds()) / float64(row.Samples)
	return nil
}

// consume reads and discards every record of rd until it is closed: the
// ring buffer drained as a reader would, so that the program finds room.
func consume(rd *cilium.Reader) error {
	var rec cilium.Record
	for {
		if err := rd.ReadInto(&rec); err != nil {
			if errors.Is(err, cilium.ErrClosed) {
				return nil
			}
			return fmt.Errorf("read the ring buffer: %w", err)
		}
	}
}
