package detect_test

import (
	"fmt"
	"net/netip"
	"runtime"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/lastgasp/lastgasp/internal/detect"
	"github.com/lastgasp/lastgasp/internal/filter"
	"github.com/lastgasp/lastgasp/internal/netconsole"
	"github.com/lastgasp/lastgasp/internal/testrig/packettest"
)

// heapBytes returns the live Go heap after a collection.
func heapBytes() int64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapAlloc)
}

// forwarded returns the lines the Go data path forwards from a capture,
// as sent by src, with times from start on.
func forwarded(t *testing.T, path string, src netip.AddrPort, start time.Time) []filter.Line {
	t.Helper()
	frames, err := packettest.ReadCapture(path)
	if err != nil {
		t.Fatal(err)
	}
	f := filter.New(filter.Config{})
	var out []filter.Line
	for _, fr := range frames {
		at := start.Add(fr.Time.Sub(frames[0].Time))
		if l, ok := f.Judge(src, append([]byte(nil), packettest.UDPPayload(fr.Frame)...), at); ok {
			out = append(out, l)
		}
	}
	return out
}

// hostile returns what a forger sends as source i: a spoofed trigger
// with context, a record whose fragments never all come, and a basic line
// continued and continued but never finished.
func hostile(i int) [][]byte {
	filler := strings.Repeat(fmt.Sprintf("%08x", i), 60) // 480 bytes, unique to the source
	usec := 1_000_000 + i
	out := [][]byte{fmt.Appendf(nil, "0,1,%d,-;BUG: kernel NULL pointer dereference, address: %016x", usec, i)}
	for j := range 4 {
		out = append(out, fmt.Appendf(nil, "4,%d,%d,-;context %d %s", 2+j, usec+1+j, j, filler[:200]))
	}
	out = append(out, fmt.Appendf(nil, "4,9,%d,-,ncfrag=0/8000;%s%s", usec+9, filler, filler[:400]))
	out = append(out, fmt.Appendf(nil, "[%5d.%06d] a line never finished %s", usec/1_000_000, usec%1_000_000, filler))
	out = append(out, []byte(filler), []byte(filler))
	return out
}

// TestMemoryBudget floods a decoder and detector, bounded by the default
// memory budget, with hostile input from 100,000 sources (spoofed
// triggers with context, never-finished fragments, endless continued
// lines) over ten seconds, while three real panics (captures) arrive: the
// Go heap must stay under the budget throughout, and every real panic
// must still be found fatal.
func TestMemoryBudget(t *testing.T) {
	if testing.Short() {
		t.Skip("floods 900,000 datagrams")
	}
	const budget = detect.DefaultMemoryBudget
	dc, cfg := detect.Budget(budget)
	asm := detect.NewAssembler(dc, cfg)

	start := time.Date(2026, 12, 1, 23, 0, 0, 0, time.UTC)
	var real []filter.Line
	panics := map[netip.Addr]bool{}
	for i, name := range []string{"netconsole/null-oops-panic", "kernel/bug-panic-ext-v4", "kernel/softlockup-panic-basic-v4"} {
		src := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 250, 0, byte(i + 1)}), 6665)
		panics[src.Addr()] = false
		real = append(real, forwarded(t, "../../testdata/"+name+".pcap", src, start.Add(time.Duration(1+3*i)*time.Second))...)
	}
	sort.SliceStable(real, func(i, j int) bool { return real[i].Time.Before(real[j].Time) })

	check := func(incs []detect.Incident) {
		for _, inc := range incs {
			if _, ok := panics[inc.Source]; ok && inc.Fatal {
				panics[inc.Source] = true
			}
		}
	}
	base := heapBytes()
	var peak int64
	const sources = 100_000
	const step = 11 * time.Microsecond // 9 datagrams a source: ten seconds in all
	now := start
	for i := range sources {
		src := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), 6665)
		for _, p := range hostile(i) {
			for len(real) > 0 && !real[0].Time.After(now) {
				check(asm.Line(real[0]))
				real = real[1:]
			}
			check(asm.Line(filter.Line{Source: src, Time: now, Flag: filter.Match, Payload: p}))
			now = now.Add(step)
		}
		if i%20_000 == 19_999 {
			peak = max(peak, heapBytes()-base)
		}
	}
	for _, l := range real {
		check(asm.Line(l))
	}
	peak = max(peak, heapBytes()-base)
	check(asm.Flush())

	dcount, tcount := asm.Decoder.Counters(), asm.Detector.Counters()
	t.Logf("peak heap %d MiB of a %d MiB budget; decoder %+v; detector %+v", peak>>20, budget>>20, dcount, tcount)
	if peak > budget {
		t.Errorf("the heap grew by %d MiB, over the %d MiB budget", peak>>20, budget>>20)
	}
	if tcount.ClosedEarly == 0 || dcount.FragmentsRefused == 0 {
		t.Errorf("the flood did not reach the bounds: %+v %+v", dcount, tcount)
	}
	for src, fatal := range panics {
		if !fatal {
			t.Errorf("the real panic from %s was not found fatal", src)
		}
	}
}

// TestBudgetDefaults: the defaults of every bound are the default budget's
// shares, so a zero configuration and --memory-budget's default agree.
func TestBudgetDefaults(t *testing.T) {
	dc, tc := detect.Budget(detect.DefaultMemoryBudget)
	if dc.MaxPendingBytes != netconsole.DefaultMaxPendingBytes || dc.MaxDedupBytes != netconsole.DefaultMaxDedupBytes ||
		tc.MaxOpenBytes != detect.DefaultMaxOpenBytes || tc.MaxStrayBytes != detect.DefaultMaxStrayBytes {
		t.Errorf("Budget(default) = %+v %+v", dc, tc)
	}
}
