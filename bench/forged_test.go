package bench

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lastgasp/lastgasp/internal/detect"
	"github.com/lastgasp/lastgasp/internal/filter"
	"github.com/lastgasp/lastgasp/internal/pattern"
	"github.com/lastgasp/lastgasp/internal/testrig/packettest"
)

// BenchmarkForgedFlood: 10,000 forged trigger lines a second, each from a
// random source (an attacker spoofing UDP), for 20 s, while a real panic
// (testdata/netconsole/null-oops-panic, its forwarded lines at their
// captured pace) arrives 5 s in: decoding and assembly bounded by the
// default memory budget, ticked every 500 ms as the collector does. One
// iteration is the whole 20 s, run as fast as the CPU allows. It fails
// unless the real panic is found fatal, and reports the cost of a line
// (ns/line), the share of one core a second of flood takes (core-%), and
// how long after its panic line the real incident was closed, in the
// flood's own time (close-s: the settle time, 2 s, when nothing delays
// it).
func BenchmarkForgedFlood(b *testing.B) {
	const (
		rate     = 10_000
		duration = 20 * time.Second
		tick     = 500 * time.Millisecond
	)
	start := time.Date(2026, 12, 2, 0, 0, 0, 0, time.UTC)
	realSrc := netip.AddrPortFrom(packettest.NodeV4, packettest.NodePort)
	payloads, times := capturePayloads(b, "null-oops-panic")
	f := filter.New(filter.Config{})
	var realLines []filter.Line
	var panicAt time.Time
	for i, p := range payloads {
		at := start.Add(5*time.Second + times[i].Sub(times[0]))
		if l, ok := f.Judge(realSrc, p, at); ok {
			realLines = append(realLines, l)
			if panicAt.IsZero() && strings.HasPrefix(string(p[pattern.TextStart(p):]), pattern.PanicPrefix) {
				panicAt = at
			}
		}
	}
	// The forged lines, made once: a trigger each, half basic, half
	// extended, from random addresses.
	rng := rand.New(rand.NewPCG(1, 2))
	var forged []filter.Line
	step := time.Second / rate
	for i := range int(duration / step) {
		var a [4]byte
		for j := range a {
			a[j] = byte(rng.Uint32())
		}
		p := fmt.Appendf(nil, "[%5d.%06d] BUG: kernel NULL pointer dereference, address: %016x\n", 100+i/1_000_000, i%1_000_000, rng.Uint64())
		if i%2 == 1 {
			p = fmt.Appendf(nil, "0,%d,%d,-;Oops: general protection fault, probably for address 0x%x", i, 100_000_000+i, rng.Uint64())
		}
		forged = append(forged, filter.Line{Source: netip.AddrPortFrom(netip.AddrFrom4(a), 6665), Time: start.Add(time.Duration(i) * step), Flag: filter.Match, Payload: p})
	}
	lines := slices.SortedStableFunc(slices.Values(append(slices.Clone(forged), realLines...)), func(x, y filter.Line) int { return x.Time.Compare(y.Time) })

	var closedAfter time.Duration
	b.ReportAllocs()
	for b.Loop() {
		asm := detect.NewAssembler(detect.Budget(detect.DefaultMemoryBudget))
		found := false
		check := func(now time.Time, incs []detect.Incident) {
			for _, inc := range incs {
				if inc.Source == realSrc.Addr() && inc.Fatal && !found {
					found, closedAfter = true, now.Sub(panicAt)
				}
			}
		}
		next := start.Add(tick)
		for _, l := range lines {
			for !next.After(l.Time) {
				check(next, asm.Tick(next))
				next = next.Add(tick)
			}
			check(l.Time, asm.Line(l))
		}
		for end := next.Add(10 * time.Second); next.Before(end); next = next.Add(tick) {
			check(next, asm.Tick(next))
		}
		if !found {
			b.Fatalf("the real panic was not found fatal in the flood: %+v", asm.Detector.Counters())
		}
	}
	perLine := float64(b.Elapsed().Nanoseconds()) / float64(b.N*len(lines))
	b.ReportMetric(perLine, "ns/line")
	b.ReportMetric(perLine*rate/1e9*100, "core-%")
	b.ReportMetric(closedAfter.Seconds(), "close-s")
}
