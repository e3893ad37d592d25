package detect_test

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lastgasp/lastgasp/internal/detect"
	"github.com/lastgasp/lastgasp/internal/filter"
	"github.com/lastgasp/lastgasp/internal/netconsole"
	"github.com/lastgasp/lastgasp/internal/pattern"
)

// collectorView is how one collector heard a capture: which forwarded
// lines it lost, how far its clock is from the capture's, and how its
// quiet-close tick is set.
type collectorView struct {
	name   string
	lose   func(l filter.Line, i int) bool
	offset time.Duration // its clock minus the capture's
	tick   time.Duration // its tick's period
	phase  time.Duration // its first tick after the first line
}

// hear runs the forwarded lines through one collector's assembler.
func (v collectorView) hear(lines []filter.Line) []detect.Incident {
	asm := detect.NewAssembler(netconsole.Config{}, detect.Config{})
	var out []detect.Incident
	if len(lines) == 0 {
		return nil
	}
	next := lines[0].Time.Add(v.offset + v.phase)
	for i, l := range lines {
		if v.lose(l, i) {
			continue
		}
		l.Time = l.Time.Add(v.offset)
		for !next.After(l.Time) {
			out = append(out, asm.Tick(next)...)
			next = next.Add(v.tick)
		}
		out = append(out, asm.Line(l)...)
	}
	for end := next.Add(time.Minute); next.Before(end); next = next.Add(v.tick) {
		out = append(out, asm.Tick(next)...)
	}
	return append(out, asm.Flush()...)
}

// TestOneIDPerPanic: collectors that heard the same panic, each with its
// own losses (the panic line, the end marker, context), clock and tick
// phase, give every incident the same id, and agree on which are fatal.
func TestOneIDPerPanic(t *testing.T) {
	startsWith := func(s string) func(filter.Line, int) bool {
		return func(l filter.Line, _ int) bool {
			return strings.HasPrefix(string(l.Payload[pattern.TextStart(l.Payload):]), s)
		}
	}
	views := []collectorView{
		{"all", func(filter.Line, int) bool { return false }, 0, 100 * time.Millisecond, 0},
		{"no panic line", startsWith("Kernel panic - not syncing"), 3700 * time.Millisecond, 500 * time.Millisecond, 37 * time.Millisecond},
		{"no end marker", startsWith("---[ end Kernel panic"), -1200 * time.Millisecond, 500 * time.Millisecond, 450 * time.Millisecond},
		{"some context lost", func(l filter.Line, i int) bool { return l.Flag == filter.Context && i%3 == 1 },
			59*time.Second + 999*time.Millisecond, 100 * time.Millisecond, 99 * time.Millisecond},
	}
	paths, _ := filepath.Glob("../../testdata/kernel/*panic*-v4.pcap")
	paths = append(paths, "../../testdata/netconsole/null-oops-panic.pcap", "../../testdata/netconsole/sysrq-v4.pcap")
	for _, path := range paths {
		t.Run(filepath.Base(path), func(t *testing.T) {
			lines := withEndMarker(forwarded(t, path, node, time.Date(2026, 12, 1, 23, 59, 58, 0, time.UTC)))
			var want []string
			for i, v := range views {
				if v.name == "no panic line" && panicOnly(lines) {
					// Nothing before the panic line: a collector that
					// lost it has only the end marker, printed later.
					// The controller's per node and boot deduplication
					// covers this one.
					continue
				}
				var ids []string
				fatal := 0
				for _, inc := range v.hear(lines) {
					ids = append(ids, inc.ID)
					if inc.Fatal {
						fatal++
					}
				}
				slices.Sort(ids)
				if fatal != 1 {
					t.Errorf("%s: %d fatal incidents, want 1", v.name, fatal)
				}
				if i == 0 {
					want = ids
				} else if !slices.Equal(ids, want) {
					t.Errorf("%s: ids %v, want %v (all lines heard)", v.name, ids, want)
				}
			}
		})
	}
}

// withEndMarker adds the end marker the kernel prints after the panic
// line and its trace when it does not reboot (panic=0): these captures,
// made with panic=1, have none.
func withEndMarker(lines []filter.Line) []filter.Line {
	var out []filter.Line
	for i, l := range lines {
		out = append(out, l)
		text := string(l.Payload[pattern.TextStart(l.Payload):])
		if !strings.HasPrefix(text, "Kernel panic - not syncing") {
			continue
		}
		// Printed last: with the last line's header (its kernel time).
		last := lines[len(lines)-1]
		end := last
		end.Time = last.Time.Add(time.Millisecond)
		end.Payload = fmt.Appendf(append([]byte(nil), last.Payload[:pattern.TextStart(last.Payload)]...), "---[ end %s ]---", strings.TrimRight(text, "\n"))
		if strings.HasSuffix(text, "\n") {
			end.Payload = append(end.Payload, '\n')
		}
		return append(append(out, lines[i+1:]...), end)
	}
	return out
}

// panicOnly reports whether the panic line is the first trigger.
func panicOnly(lines []filter.Line) bool {
	for _, l := range lines {
		if l.Flag == filter.Match {
			return strings.HasPrefix(string(l.Payload[pattern.TextStart(l.Payload):]), "Kernel panic")
		}
	}
	return false
}

// TestSplitByKernelTime: whether a line joins its source's incident or
// starts the next is decided by the lines' own kernel times, not by when
// a collector's quiet-close tick ran: a WARNING 5.2 s before a panic is
// its own incident on every collector; one 4.8 s before (heard 5.3 s
// before: the network) is part of it.
func TestSplitByKernelTime(t *testing.T) {
	for _, c := range []struct {
		kernelGap, heardGap time.Duration
		incidents           int
	}{
		{5200 * time.Millisecond, 5200 * time.Millisecond, 2},
		{4800 * time.Millisecond, 5300 * time.Millisecond, 1},
	} {
		var ids [][]string
		for _, phase := range []time.Duration{0, 30 * time.Millisecond, 130 * time.Millisecond, 260 * time.Millisecond, 490 * time.Millisecond} {
			lines := []filter.Line{
				{Source: node, Time: t0, Payload: []byte("[  100.000000] WARNING: CPU: 0 PID: 1 at x.c:1 f+0x1/0x2\n")},
				{Source: node, Time: t0.Add(c.heardGap), Payload: []byte("[" + kernelTime(100*time.Second+c.kernelGap) + "] Kernel panic - not syncing: panic_on_warn set ...\n")},
			}
			v := collectorView{"", func(filter.Line, int) bool { return false }, 0, 500 * time.Millisecond, phase}
			got := v.hear(lines)
			var these []string
			for _, inc := range got {
				these = append(these, inc.ID)
			}
			if len(got) != c.incidents || !got[len(got)-1].Fatal {
				t.Errorf("kernel gap %v, heard %v, tick phase %v: %d incidents, want %d: %+v", c.kernelGap, c.heardGap, phase, len(got), c.incidents, got)
			}
			ids = append(ids, these)
		}
		for _, these := range ids[1:] {
			if !slices.Equal(these, ids[0]) {
				t.Errorf("kernel gap %v: ids %v, want %v", c.kernelGap, these, ids[0])
			}
		}
	}
}

// kernelTime formats an uptime as printk does.
func kernelTime(d time.Duration) string {
	return fmt.Sprintf("%5d.%06d", d/time.Second, (d%time.Second)/time.Microsecond)
}
