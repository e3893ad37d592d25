package kernelrig_test

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/lastgasp/lastgasp/internal/detect"
	"github.com/lastgasp/lastgasp/internal/filter"
	"github.com/lastgasp/lastgasp/internal/netconsole"
	"github.com/lastgasp/lastgasp/internal/pattern"
	"github.com/lastgasp/lastgasp/internal/pcapscan"
	"github.com/lastgasp/lastgasp/loader"
)

// captures holds the rig's recordings (go run ./internal/testrig/kernelrig/cmd/record).
const captures = "../../../testdata/kernel"

// incident is what the tests check of a detect.Incident.
type incident struct {
	Source string
	Kind   pattern.Kind
	Fatal  bool
	Cause  string
	Reason string
}

func summarize(inc detect.Incident) incident {
	return incident{inc.Source.String(), inc.Kind, inc.Fatal, inc.Cause, inc.Reason}
}

func summaries(incs []detect.Incident) []incident {
	out := make([]incident, len(incs))
	for i, inc := range incs {
		out[i] = summarize(inc)
	}
	return out
}

// scanCapture does what "lastgasp scan FILE" does: every packet through
// the real XDP program (BPF_PROG_TEST_RUN) with the default pattern table
// and context, the forwarded lines through the decoder and the detector.
// A program of its own per file: no burst runs on from another capture.
func scanCapture(path string) ([]detect.Incident, error) {
	table := pattern.Default()
	sc, err := pcapscan.New(loader.Config{
		Ports:        []uint16{loader.DefaultPort},
		Patterns:     table,
		ContextLines: loader.DefaultContextLines,
		RingBufSize:  1 << 20,
	})
	if err != nil {
		return nil, err
	}
	defer sc.Close()
	asm := detect.NewAssembler(netconsole.Config{}, detect.Config{Patterns: table})
	var incs []detect.Incident
	if _, err := sc.File(path, func(l filter.Line) { incs = append(incs, asm.Line(l)...) }); err != nil {
		return incs, err
	}
	return append(incs, asm.Flush()...), nil
}

// Sources of the captures.
const (
	v4 = "10.99.0.2"
	v6 = "fd00:99::2"
)

// What the kernel printed in the recorded runs.
const (
	fatalException = "Kernel panic - not syncing: Fatal exception"
	nullDeref      = "BUG: kernel NULL pointer dereference, address: 0000000000000000"
	bugLine        = "kernel BUG at kernelrig/crashmod/crashmod.c:167!"
	gpfLine        = "general protection fault, probably for non-canonical address 0xdead000000000000: 0000 [#1] PREEMPT SMP NOPTI"
	warnLine       = "WARNING: CPU: 0 PID: 101 at kernelrig/crashmod/crashmod.c:178 crashmod_init+0xa6/0x1000 [crashmod]"
	sysrqLine      = "sysrq: Trigger a crash"
	sysrqPanic     = "Kernel panic - not syncing: sysrq triggered crash"
	directPanic    = "Kernel panic - not syncing: lastgasp-test: direct panic"
	longPanic      = "Kernel panic - not syncing: lastgasp-test: panic after long lines"
	softLockup     = "watchdog: BUG: soft lockup - CPU#0 stuck for 6s! [insmod:107]"
	softPanic      = "Kernel panic - not syncing: softlockup: hung tasks"
	hungLine       = "INFO: task lg-hung:111 blocked for more than 5 seconds."
	hungPanic      = "Kernel panic - not syncing: hung_task: blocked tasks"
	rcuStall       = "rcu: INFO: rcu_preempt self-detected stall on CPU"
	rcuPanic       = "Kernel panic - not syncing: RCU Stall"
	oomPanic       = "Kernel panic - not syncing: Out of memory: system-wide panic_on_oom is enabled"
	oomKilled      = "Out of memory: Killed process 104 (memhog) total-vm:179852kB, anon-rss:178404kB, file-rss:4kB, shmem-rss:648kB, UID:0 pgtables:396kB oom_score_adj:0"
)

// fatal is one fatal incident.
func fatal(src string, kind pattern.Kind, cause, reason string) []incident {
	return []incident{{src, kind, true, cause, reason}}
}

// report is one incident whose node lived on: its reason is its cause.
func report(src string, kind pattern.Kind, cause string) []incident {
	return []incident{{src, kind, false, cause, cause}}
}

// wantIncidents is, for every capture of testdata/kernel, the incidents
// "lastgasp scan" must find: none for a healthy node, one otherwise.
// Numbers the kernel chose in a run (pids, line numbers, "stuck for 6s")
// are the recorded run's: re-recording means checking them again.
var wantIncidents = map[string][]incident{
	"healthy-basic-v4": nil,

	"sysrq-basic-v4": fatal(v4, pattern.KindSysrq, sysrqLine, sysrqPanic),
	"sysrq-ext-v4":   fatal(v4, pattern.KindSysrq, sysrqLine, sysrqPanic),
	"sysrq-ext-v6":   fatal(v6, pattern.KindSysrq, sysrqLine, sysrqPanic),

	"panic-basic-v4": fatal(v4, pattern.KindPanic, directPanic, directPanic),
	"panic-ext-v4":   fatal(v4, pattern.KindPanic, directPanic, directPanic),

	"null-panic-basic-v4": fatal(v4, pattern.KindOops, nullDeref, fatalException),
	"null-panic-ext-v4":   fatal(v4, pattern.KindOops, nullDeref, fatalException),
	"null-panic-ext-v6":   fatal(v6, pattern.KindOops, nullDeref, fatalException),
	"null-alive-basic-v4": report(v4, pattern.KindOops, nullDeref),

	"bug-panic-basic-v4": fatal(v4, pattern.KindBug, bugLine, fatalException),
	"bug-panic-ext-v4":   fatal(v4, pattern.KindBug, bugLine, fatalException),
	"bug-alive-basic-v4": report(v4, pattern.KindBug, bugLine),

	"gpf-panic-basic-v4": fatal(v4, pattern.KindGPF, gpfLine, fatalException),
	"gpf-panic-ext-v4":   fatal(v4, pattern.KindGPF, gpfLine, fatalException),
	"gpf-alive-basic-v4": report(v4, pattern.KindGPF, gpfLine),

	"warn-alive-basic-v4": report(v4, pattern.KindWarning, warnLine),
	"warn-alive-ext-v4":   report(v4, pattern.KindWarning, warnLine),
	// A WARN made fatal by kernel.panic_on_warn=1: the warning is its
	// kind, the panic line its reason.
	"warn-panic-basic-v4": fatal(v4, pattern.KindWarning,
		"WARNING: CPU: 0 PID: 104 at kernelrig/crashmod/crashmod.c:178 crashmod_init+0xa6/0x1000 [crashmod]",
		"Kernel panic - not syncing: kernel: panic_on_warn set ..."),

	"softlockup-panic-basic-v4": fatal(v4, pattern.KindSoftLockup, softLockup, softPanic),
	"softlockup-panic-ext-v4":   fatal(v4, pattern.KindSoftLockup, softLockup, softPanic),
	"softlockup-alive-basic-v4": report(v4, pattern.KindSoftLockup, softLockup),

	"hung-panic-basic-v4": fatal(v4, pattern.KindHungTask, hungLine, hungPanic),
	"hung-panic-ext-v4":   fatal(v4, pattern.KindHungTask, hungLine, hungPanic),
	"hung-panic-basic-v6": fatal(v6, pattern.KindHungTask, hungLine, hungPanic),
	// Reported four times ("more than 5 seconds", 6, 7, 8): one incident.
	"hung-alive-basic-v4": report(v4, pattern.KindHungTask, hungLine),

	"rcustall-panic-basic-v4": fatal(v4, pattern.KindRCUStall, rcuStall, rcuPanic),
	"rcustall-panic-ext-v4":   fatal(v4, pattern.KindRCUStall, rcuStall, rcuPanic),

	// Not seen by the kernel under TCG (no perf NMI watchdog): nothing
	// to report.
	"hardlockup-undetected-basic-v4": nil,

	// NOTE: the cause is the panic line itself. The OOM report's first
	// line, "memhog invoked oom-killer: gfp_mask=...", starts with the
	// task's name and matches no (prefix) pattern; it precedes the panic
	// line, so it is not forwarded as context either.
	"oom-panic-basic-v4": fatal(v4, pattern.KindOOM, oomPanic, oomPanic),
	"oom-panic-ext-v4":   fatal(v4, pattern.KindOOM, oomPanic, oomPanic),
	"oom-alive-basic-v4": report(v4, pattern.KindOOM, oomKilled),

	"long-basic-v4": fatal(v4, pattern.KindPanic, longPanic, longPanic),
	"long-ext-v4":   fatal(v4, pattern.KindPanic, longPanic, longPanic),
	"long-ext-v6":   fatal(v6, pattern.KindPanic, longPanic, longPanic),
}

// TestCaptures runs every recorded capture through the real XDP program
// and the detector, and checks each incident against wantIncidents:
// source, kind, fatal, cause and reason. A node that said "lg-done: guest
// still alive" on its console must have no fatal incident.
func TestCaptures(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipped: loading the XDP program for BPF_PROG_TEST_RUN needs root")
	}
	files, err := filepath.Glob(filepath.Join(captures, "*.pcap"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no captures in %s (%v)", captures, err)
	}
	seen := map[string]bool{}
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".pcap")
		seen[name] = true
		t.Run(name, func(t *testing.T) {
			t.Parallel() // most of a scan is the kernel loading the program
			want, ok := wantIncidents[name]
			if !ok {
				t.Fatalf("no entry in wantIncidents for %s", name)
			}
			incs, err := scanCapture(f)
			if err != nil {
				t.Fatal(err)
			}
			got := summaries(incs)
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("incidents\n%s\nwant\n%s", format(got), format(want))
			}
			for _, inc := range incs {
				if inc.ID == "" || inc.First.IsZero() || len(inc.Lines) == 0 {
					t.Errorf("incident without id, time or lines: %+v", inc)
				}
			}
			console, err := os.ReadFile(filepath.Join(captures, name+".console.log"))
			if err != nil {
				t.Fatal(err)
			}
			if bytes.Contains(console, []byte("lg-done: guest still alive")) {
				for _, inc := range incs {
					if inc.Fatal {
						t.Errorf("fatal incident from a node that lived on: %+v", summarize(inc))
					}
				}
			}
		})
	}
	var missing []string
	for name := range wantIncidents {
		if !seen[name] {
			missing = append(missing, name)
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Errorf("captures listed in wantIncidents but not in %s: %v", captures, missing)
	}
}

func format(incs []incident) string {
	if len(incs) == 0 {
		return "  (none)"
	}
	var b strings.Builder
	for _, inc := range incs {
		fmt.Fprintf(&b, "  %s %s fatal=%v\n    cause:  %q\n    reason: %q\n", inc.Source, inc.Kind, inc.Fatal, inc.Cause, inc.Reason)
	}
	return strings.TrimRight(b.String(), "\n")
}

// fill builds crashmod's long lines the way its fill() does: head, then
// unit repeated while it fits in n bytes, then dots up to n.
func fill(n int, head, unit string) string {
	s := head
	for len(s)+len(unit) <= n {
		s += unit
	}
	return s + strings.Repeat(".", n-len(s))
}

// TestLongLines checks the lines of mode=long that reach netconsole's
// 1000-byte datagram limit: line A (980 bytes, one datagram) arrives
// whole in both formats; line B (989 bytes kept by printk) arrives whole
// in the extended format, reassembled from two ncfrag fragments with its
// \xc3\xa9 escapes undone, and cut in two in the basic format, which has
// no way to say a datagram goes on in the next.
func TestLongLines(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipped: loading the XDP program for BPF_PROG_TEST_RUN needs root")
	}
	lineA := fill(980, "lastgasp-test: long line A (980 bytes, one datagram in either format): ", "0123456789abcdef")
	lineB := fill(1100, "lastgasp-test: long line B (cut by printk to 989 bytes, fragmented): ", "café ")[:989]
	for _, name := range []string{"long-basic-v4", "long-ext-v4", "long-ext-v6"} {
		t.Run(name, func(t *testing.T) {
			incs, err := scanCapture(filepath.Join(captures, name+".pcap"))
			if err != nil {
				t.Fatal(err)
			}
			if len(incs) != 1 {
				t.Fatalf("%d incidents, want 1", len(incs))
			}
			var a, b string
			for _, l := range incs[0].Lines {
				// Each line is "[    3.123456] text".
				_, text, _ := strings.Cut(l, "] ")
				switch {
				case strings.HasPrefix(text, "lastgasp-test: long line A"):
					a = text
				case strings.HasPrefix(text, "lastgasp-test: long line B"):
					b = text
				}
			}
			if a != lineA {
				t.Errorf("line A: got %d bytes %q\nwant %d bytes %q", len(a), a, len(lineA), lineA)
			}
			// Extended: two ncfrag fragments. Basic: two datagrams, the
			// first cut inside an "é" and without its newline, which
			// the decoder continues with the second.
			if b != lineB {
				t.Errorf("line B: got %d bytes %q\nwant %d bytes %q", len(b), b, len(lineB), lineB)
			}
		})
	}
}
