package detect_test

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lastgasp/lastgasp/internal/detect"
	"github.com/lastgasp/lastgasp/internal/filter"
	"github.com/lastgasp/lastgasp/internal/netconsole"
	"github.com/lastgasp/lastgasp/internal/pattern"
	"github.com/lastgasp/lastgasp/internal/testrig/packettest"
)

var (
	node = netip.MustParseAddrPort("10.99.0.2:6665")
	t0   = time.Date(2026, 11, 22, 17, 55, 0, 0, time.UTC)
)

// scanGo runs a capture through the Go data path (filter, decoder,
// detector), as the socket receiver would.
func scanGo(t *testing.T, path string) []detect.Incident {
	t.Helper()
	frames, err := packettest.ReadCapture(path)
	if err != nil {
		t.Fatal(err)
	}
	f := filter.New(filter.Config{})
	asm := detect.NewAssembler(netconsole.Config{}, detect.Config{})
	var out []detect.Incident
	for _, c := range frames {
		if l, ok := f.Judge(node, packettest.UDPPayload(c.Frame), c.Time); ok {
			out = append(out, asm.Line(l)...)
		}
	}
	return append(out, asm.Flush()...)
}

// TestCaptures checks the incident each real capture gives.
func TestCaptures(t *testing.T) {
	type want struct {
		kind          pattern.Kind
		fatal         bool
		reason, cause string
		module, task  string
		pid           int
	}
	nullDeref := "BUG: kernel NULL pointer dereference, address: 0000000000000000"
	warn := "WARNING: CPU: 0 PID: 111 at drivers/misc/crashmod.c:28 crashmod_init+0x89/0x1000 [crashmod]"
	cases := map[string][]want{
		"healthy":         nil,
		"warn-alive":      {{pattern.KindWarning, false, warn, warn, "crashmod", "insmod", 111}},
		"null-oops-alive": {{pattern.KindOops, false, nullDeref, nullDeref, "crashmod", "insmod", 114}},
		"null-oops-panic": {{pattern.KindOops, true, "Kernel panic - not syncing: Fatal exception", nullDeref, "crashmod", "insmod", 114}},
		"sysrq-v4":        {{pattern.KindSysrq, true, "Kernel panic - not syncing: sysrq triggered crash", "sysrq: Trigger a crash", "", "init", 1}},
		"sysrq-ext-v4":    {{pattern.KindSysrq, true, "Kernel panic - not syncing: sysrq triggered crash", "sysrq: Trigger a crash", "", "init", 1}},
	}
	for name, wants := range cases {
		t.Run(name, func(t *testing.T) {
			got := scanGo(t, filepath.Join("../../testdata/netconsole", name+".pcap"))
			if len(got) != len(wants) {
				t.Fatalf("%d incidents, want %d: %+v", len(got), len(wants), got)
			}
			for i, w := range wants {
				g := got[i]
				if g.Kind != w.kind || g.Fatal != w.fatal || g.Reason != w.reason || g.Cause != w.cause ||
					g.Module != w.module || g.Task != w.task || g.PID != w.pid || g.Source != node.Addr() {
					t.Errorf("incident %+v\nwant %+v", g, w)
				}
				if len(g.Lines) < 20 || g.First.After(g.Last) || len(g.ID) != 16 {
					t.Errorf("%d lines, first %v last %v, id %q", len(g.Lines), g.First, g.Last, g.ID)
				}
			}
		})
	}
}

// feed gives the detector basic lines "[uptime] text" one apart in time,
// received one millisecond apart from start.
func feed(d *detect.Detector, src netip.AddrPort, start time.Time, lines ...string) []detect.Incident {
	var out []detect.Incident
	for i, l := range lines {
		now := start.Add(time.Duration(i) * time.Millisecond)
		out = append(out, d.Tick(now)...)
		m := netconsole.Message{Source: src, Received: now, Level: -1, Facility: -1,
			Uptime: 100*time.Second + time.Duration(i)*time.Millisecond, HasUptime: true, Text: l}
		out = append(out, d.Add(m)...)
	}
	return out
}

func TestKinds(t *testing.T) {
	cases := []struct {
		lines []string
		kind  pattern.Kind
		fatal bool
		task  string
	}{
		{[]string{"watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [spin:42]", "Kernel panic - not syncing: softlockup: hung tasks"}, pattern.KindSoftLockup, true, "spin"},
		{[]string{"INFO: task sleepy:7 blocked for more than 120 seconds.", "Kernel panic - not syncing: hung_task: blocked tasks"}, pattern.KindHungTask, true, "sleepy"},
		{[]string{"Kernel panic - not syncing: Out of memory: system-wide panic_on_oom is enabled"}, pattern.KindOOM, true, ""},
		{[]string{"Out of memory: Killed process 1234 (stress) total-vm:1kB"}, pattern.KindOOM, false, "stress"},
		{[]string{"watchdog: Watchdog detected hard LOCKUP on cpu 1", "Kernel panic - not syncing: Hard LOCKUP"}, pattern.KindHardLockup, true, ""},
		{[]string{"rcu: INFO: rcu_sched self-detected stall on CPU", "Kernel panic - not syncing: RCU Stall"}, pattern.KindRCUStall, true, ""},
		{[]string{"mce: [Hardware Error]: CPU 0: Machine Check Exception: 5 Bank 4", "Kernel panic - not syncing: Fatal machine check"}, pattern.KindMCE, true, ""},
		{[]string{"kernel BUG at drivers/misc/crashmod.c:40!", "invalid opcode: 0000 [#1] PREEMPT SMP NOPTI", "Kernel panic - not syncing: Fatal exception"}, pattern.KindBug, true, ""},
		{[]string{"general protection fault, probably for non-canonical address 0xdead: 0000 [#1]"}, pattern.KindGPF, false, ""},
		{[]string{"Oops: general protection fault, probably for non-canonical address 0xdead: 0000 [#1]"}, pattern.KindGPF, false, ""},
		{[]string{"WARNING: CPU: 1 PID: 9 at x.c:1 f+0x1/0x2", "BUG: unable to handle page fault for address: ffff"}, pattern.KindOops, false, ""},
		{[]string{"Kernel panic - not syncing: VFS: Unable to mount root fs"}, pattern.KindPanic, true, ""},
		{[]string{"---[ end Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000009 ]---"}, pattern.KindPanic, true, ""},
	}
	for _, c := range cases {
		d := detect.New(detect.Config{})
		got := append(feed(d, node, t0, c.lines...), d.Flush()...)
		if len(got) != 1 {
			t.Errorf("%q: %d incidents", c.lines, len(got))
			continue
		}
		if g := got[0]; g.Kind != c.kind || g.Fatal != c.fatal || g.Task != c.task || g.Cause != c.lines[0] {
			t.Errorf("%q: kind %s fatal %v task %q cause %q", c.lines, g.Kind, g.Fatal, g.Task, g.Cause)
		}
	}
	// The end marker gives the reason when the panic line was lost.
	d := detect.New(detect.Config{})
	got := feed(d, node, t0, "---[ end Kernel panic - not syncing: Attempted to kill init! ]---")
	if len(got) != 1 || got[0].Reason != "Kernel panic - not syncing: Attempted to kill init!" {
		t.Errorf("end marker alone: %+v", got)
	}
}

// TestPanicWhateverTheTable: a table without the panic line's pattern (a
// patterns file's, replacing the built-in one) still sees the kernel die.
func TestPanicWhateverTheTable(t *testing.T) {
	tab, err := pattern.NewTable([]pattern.Pattern{{ID: 1, Prefix: "Oops: ", Kind: pattern.KindOops}})
	if err != nil {
		t.Fatal(err)
	}
	d := detect.New(detect.Config{Patterns: tab})
	got := append(feed(d, node, t0, "Kernel panic - not syncing: Fatal exception"), d.Flush()...)
	got = append(got, feed(d, netip.MustParseAddrPort("10.99.0.3:6665"), t0, "Oops: 0000 [#1]", "---[ end Kernel panic - not syncing: Fatal exception ]---")...)
	if len(got) != 2 || !got[0].Fatal || !got[1].Fatal || got[1].Kind != pattern.KindOops {
		t.Errorf("%+v", got)
	}
}

// TestLastSeenForward: a line received earlier than the incident's latest
// (a cut line given up on, emitted with the time its first part came)
// does not move the incident's last-seen time back, nor close it early.
func TestLastSeenForward(t *testing.T) {
	d := detect.New(detect.Config{})
	feed(d, node, t0, "Oops: 0000 [#1]")
	late := netconsole.Message{Source: node, Received: t0.Add(-9 * time.Second), Level: -1, Facility: -1, Text: "a cut line, given up on"}
	d.Add(late)
	if got := d.Tick(t0.Add(3 * time.Second)); len(got) != 0 {
		t.Fatalf("closed 3 s after its last line: %+v", got)
	}
	got := d.Flush()
	if len(got) != 1 || !got[0].Last.Equal(t0) || !got[0].First.Equal(late.Received) {
		t.Errorf("%+v", got)
	}
}

func TestUnconfirmedHungTask(t *testing.T) {
	d := detect.New(detect.Config{})
	got := append(feed(d, node, t0, "INFO: task foo:1 can be anything else"), d.Flush()...)
	if len(got) != 0 || d.Counters().Unconfirmed != 1 {
		t.Errorf("incidents %+v, counters %+v", got, d.Counters())
	}
}

func TestClosing(t *testing.T) {
	d := detect.New(detect.Config{QuietPeriod: 5 * time.Second, SettleTime: 2 * time.Second})
	// A non-fatal report closes after the quiet period, and a second's
	// grace for lines delayed on their way.
	feed(d, node, t0, "Oops: 0000 [#1] SMP", "CPU: 0 PID: 5 Comm: kworker/0:1 Tainted: G")
	if got := d.Tick(t0.Add(5500 * time.Millisecond)); len(got) != 0 {
		t.Errorf("closed before the quiet period: %+v", got)
	}
	got := d.Tick(t0.Add(7 * time.Second))
	if len(got) != 1 || got[0].Fatal || got[0].Task != "kworker/0:1" {
		t.Fatalf("after the quiet period: %+v", got)
	}

	// A panic settles even while its trace keeps coming.
	t1 := t0.Add(time.Minute)
	feed(d, node, t1, "Kernel panic - not syncing: Fatal exception", "Call Trace:")
	late := netconsole.Message{Source: node, Received: t1.Add(1500 * time.Millisecond), Text: " <TASK>"}
	d.Add(late)
	got = d.Tick(t1.Add(2 * time.Second))
	if len(got) != 1 || !got[0].Fatal || len(got[0].Lines) != 3 {
		t.Fatalf("after settling: %+v", got)
	}

	// The end marker closes at once.
	t2 := t0.Add(2 * time.Minute)
	got = feed(d, node, t2, "Kernel panic - not syncing: x", "---[ end Kernel panic - not syncing: x ]---")
	if len(got) != 1 || got[0].Reason != "Kernel panic - not syncing: x" {
		t.Fatalf("end marker: %+v", got)
	}

	// Lines from another source are not part of an incident.
	other := netip.MustParseAddrPort("10.99.0.3:6665")
	feed(d, node, t2.Add(time.Minute), "Oops: 0000 [#2] SMP")
	feed(d, other, t2.Add(time.Minute), "an ordinary line", "Kernel panic - not syncing: other")
	got = d.Flush()
	if len(got) != 2 || got[0].Source == got[1].Source {
		t.Fatalf("two sources: %+v", got)
	}
	for _, inc := range got {
		if len(inc.Lines) != 1 {
			t.Errorf("%v: lines %q", inc.Source, inc.Lines)
		}
	}
}

func TestBounds(t *testing.T) {
	d := detect.New(detect.Config{MaxLines: 5, MaxOpen: 2})
	lines := []string{"Kernel panic - not syncing: x"}
	for i := range 20 {
		lines = append(lines, fmt.Sprintf("trace %d", i))
	}
	got := append(feed(d, node, t0, lines...), d.Flush()...)
	if len(got) != 1 || len(got[0].Lines) != 5 || got[0].LinesDropped != 16 {
		t.Fatalf("%+v", got)
	}
	// A third source makes room by closing the least recently heard.
	for i := range 3 {
		src := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, byte(i)}), 6665)
		got = append(got, feed(d, src, t0.Add(time.Duration(i)*time.Second), "Oops: 0000")...)
	}
	if len(got) != 2 || got[1].Source != netip.MustParseAddr("10.0.0.0") {
		t.Fatalf("%+v", got)
	}
}

// TestStableID checks two collectors that heard the same panic, one of
// them missing some context lines and hearing them in another order, name
// it the same, and that a detector does not return the same incident
// twice.
func TestStableID(t *testing.T) {
	lines := []string{"BUG: kernel NULL pointer dereference", "Oops: 0000 [#1]", "RIP: 0010:f+0x1/0x2 [m]", "Kernel panic - not syncing: Fatal exception"}
	a := detect.New(detect.Config{})
	b := detect.New(detect.Config{})
	ia := append(feed(a, node, t0, lines...), a.Flush()...)
	// b lost the RIP line and heard the rest out of order: the cause is
	// still the first trigger the kernel printed.
	var ib []detect.Incident
	for _, i := range []int{1, 3, 0} {
		m := netconsole.Message{Source: node, Received: t0.Add(time.Duration(10+i) * time.Millisecond),
			Uptime: 100*time.Second + time.Duration(i)*time.Millisecond, HasUptime: true, Text: lines[i]}
		ib = append(ib, b.Add(m)...)
	}
	ib = append(ib, b.Flush()...)
	if len(ia) != 1 || len(ib) != 1 || ia[0].ID != ib[0].ID {
		t.Fatalf("ids %+v / %+v", ia, ib)
	}
	// The same incident again (a replay) is not returned twice...
	again := append(feed(a, node, t0.Add(time.Second), lines...), a.Flush()...)
	if len(again) != 0 || a.Counters().Duplicates != 1 {
		t.Errorf("replay: %+v, counters %+v", again, a.Counters())
	}
	// ...but the same words from the next boot are a new incident.
	c := detect.New(detect.Config{})
	var next []detect.Incident
	for i, l := range lines {
		m := netconsole.Message{Source: node, Received: t0.Add(time.Hour), Uptime: 5*time.Second + time.Duration(i), HasUptime: true, Text: l}
		next = append(next, c.Add(m)...)
	}
	next = append(next, c.Flush()...)
	if len(next) != 1 || next[0].ID == ia[0].ID {
		t.Errorf("next boot: %+v", next)
	}
	if !strings.HasPrefix(ia[0].Lines[0], "[  100.000000] BUG") {
		t.Errorf("lines rendered as %q", ia[0].Lines[0])
	}
}

// TestPanicOnWarn: a WARN made fatal by panic_on_warn is a fatal warning,
// not a direct panic; a panic with no other trigger is.
func TestPanicOnWarn(t *testing.T) {
	d := detect.New(detect.Config{})
	got := append(feed(d, node, t0, "WARNING: CPU: 0 PID: 104 at x.c:178 f+0xa6/0x1000 [m]", "Kernel panic - not syncing: kernel: panic_on_warn set ..."), d.Flush()...)
	if len(got) != 1 || got[0].Kind != pattern.KindWarning || !got[0].Fatal {
		t.Errorf("%+v", got)
	}
}

// TestTraceModule: without a RIP or WARNING line, the module is the first
// reliable call trace frame's.
func TestTraceModule(t *testing.T) {
	d := detect.New(detect.Config{})
	got := append(feed(d, node, t0, "INFO: task lg-hung:111 blocked for more than 5 seconds.", "Call Trace:", " ? guess+0x1/0x2 [notthis]", " lg_hung_fn+0x1d/0x40 [crashmod]", "Kernel panic - not syncing: hung_task: blocked tasks"), d.Flush()...)
	if len(got) != 1 || got[0].Module != "crashmod" || got[0].Task != "lg-hung" || got[0].Kind != pattern.KindHungTask {
		t.Errorf("%+v", got)
	}
}

// TestLateEndMarker: the end-of-panic marker arriving after its incident
// closed (SettleTime passed) is not a second incident.
func TestLateEndMarker(t *testing.T) {
	d := detect.New(detect.Config{SettleTime: time.Second})
	got := feed(d, node, t0, "Kernel panic - not syncing: Fatal exception")
	got = append(got, d.Tick(t0.Add(2*time.Second))...)
	m := netconsole.Message{Source: node, Received: t0.Add(3 * time.Second), Text: "---[ end Kernel panic - not syncing: Fatal exception ]---"}
	got = append(got, d.Add(m)...)
	got = append(got, d.Flush()...)
	if len(got) != 1 {
		t.Errorf("%d incidents: %+v", len(got), got)
	}
}

// TestStrays: when the ring buffer overflows, the context lines that went
// to the backstop socket can be read before the triggers that stayed in
// the ring buffer. The incident is the same as in kernel order; strays
// logged before the trigger, or long before, are not taken.
func TestStrays(t *testing.T) {
	for _, name := range []string{"sysrq-v4", "sysrq-ext-v4", "null-oops-panic"} {
		t.Run(name, func(t *testing.T) {
			frames, err := packettest.ReadCapture(filepath.Join("../../testdata/netconsole", name+".pcap"))
			if err != nil {
				t.Fatal(err)
			}
			// The lines the filter forwards, decoded: triggers and context.
			f := filter.New(filter.Config{})
			dec := netconsole.NewDecoder(netconsole.Config{})
			var msgs []netconsole.Message
			for _, c := range frames {
				if l, ok := f.Judge(node, packettest.UDPPayload(c.Frame), c.Time); ok {
					msgs = append(msgs, dec.Decode(l.Source, l.Payload, l.Time)...)
				}
			}
			run := func(order []netconsole.Message) []detect.Incident {
				d := detect.New(detect.Config{})
				var out []detect.Incident
				for _, m := range order {
					out = append(out, d.Add(m)...)
				}
				return append(out, d.Flush()...)
			}
			want := run(msgs)

			// Context first (as the socket delivers it), then the triggers.
			var triggers, context []netconsole.Message
			for _, m := range msgs {
				if _, ok := pattern.Default().MatchText([]byte(m.Text)); ok {
					triggers = append(triggers, m)
				} else {
					context = append(context, m)
				}
			}
			// A line logged before the panic and heard just before it,
			// and one heard long before: neither belongs to it.
			before := msgs[0]
			before.Text, before.Seq, before.Uptime = "an earlier line", before.Seq-1, before.Uptime-time.Millisecond
			old := msgs[len(msgs)-1]
			old.Text, old.Received = "a line heard long ago", old.Received.Add(-time.Minute)
			got := run(append(append([]netconsole.Message{old, before}, context...), triggers...))
			if len(want) != 1 || len(got) != 1 {
				t.Fatalf("%d and %d incidents", len(want), len(got))
			}
			if w, g := want[0], got[0]; g.ID != w.ID || strings.Join(g.Lines, "\n") != strings.Join(w.Lines, "\n") || g.Task != w.Task || g.Module != w.Module {
				t.Errorf("out of order:\n%s\nin order:\n%s", strings.Join(g.Lines, "\n"), strings.Join(w.Lines, "\n"))
			}
		})
	}
}

// TestMemoryBound: a flood of triggers from many sources, each followed
// by long lines, cannot hold more than MaxOpenBytes: the least recently
// heard incidents are closed early (and returned, not lost), counted.
func TestMemoryBound(t *testing.T) {
	const budget = 256 << 10
	d := detect.New(detect.Config{MaxOpenBytes: budget})
	long := strings.Repeat("x", 900)
	var closed []detect.Incident
	now := t0
	for i := range 200 {
		src := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 1, byte(i / 256), byte(i)}), 6665)
		lines := []string{"Oops: 0000 [#1] SMP"}
		for range 50 {
			lines = append(lines, long)
		}
		closed = append(closed, feed(d, src, now, lines...)...)
		now = now.Add(100 * time.Millisecond)
	}
	c := d.Counters()
	if c.ClosedEarly == 0 || uint64(len(closed)) != c.ClosedEarly {
		t.Fatalf("%d closed early, %d incidents returned", c.ClosedEarly, len(closed))
	}
	// The first sources went first, each whole.
	if closed[0].Source != netip.MustParseAddr("10.1.0.0") || len(closed[0].Lines) != 51 {
		t.Errorf("first closed: %v, %d lines", closed[0].Source, len(closed[0].Lines))
	}
	// What stays open fits the budget: about budget / (50 × ~1.2 KB).
	open := d.Flush()
	if n := len(open); n == 0 || n*51*(900+256) > budget+51*(900+256) {
		t.Errorf("%d incidents still open: over a %d-byte budget", n, budget)
	}
	if got := len(closed) + len(open); got != 200 {
		t.Errorf("%d incidents in all, want 200: none lost", got)
	}
}

// TestKernelLinesOnly: a process that writes /dev/kmsg gets its line sent
// by netconsole too, tagged with facility user (prefix 8 + level): it
// must never open an incident, nor make one fatal.
func TestKernelLinesOnly(t *testing.T) {
	asm := detect.NewAssembler(netconsole.Config{}, detect.Config{})
	var got []detect.Incident
	for i, p := range []string{
		// echo "<12>Kernel panic - not syncing: Fatal exception" > /dev/kmsg, by task 412
		"12,1042,31562345,-,caller=T412;Kernel panic - not syncing: Fatal exception",
		"12,1043,31562401,-,caller=T412;---[ end Kernel panic - not syncing: Fatal exception ]---",
	} {
		got = append(got, asm.Line(filter.Line{Source: node, Time: t0.Add(time.Duration(i) * time.Millisecond), Payload: []byte(p)})...)
	}
	got = append(got, asm.Flush()...)
	if len(got) != 0 || asm.Detector.Counters().NotKernel != 2 {
		t.Fatalf("lines of facility user: incidents %+v, counters %+v", got, asm.Detector.Counters())
	}
	// Within a kernel's own report, the forged panic line is context.
	for i, p := range []string{
		"4,1044,31570000,-,caller=T98;WARNING: CPU: 0 PID: 98 at net/core/dev.c:1 f+0x1/0x2",
		"12,1045,31570100,-,caller=T412;Kernel panic - not syncing: Fatal exception",
	} {
		got = append(got, asm.Line(filter.Line{Source: node, Time: t0.Add(time.Second + time.Duration(i)*time.Millisecond), Payload: []byte(p)})...)
	}
	got = append(got, asm.Flush()...)
	if len(got) != 1 || got[0].Fatal || got[0].Kind != pattern.KindWarning || len(got[0].Lines) != 2 {
		t.Errorf("a kernel WARNING with a forged panic line after it: %+v", got)
	}
}

// TestExtradata: the incident carries the node name and kernel release
// netconsole's userdata and sysdata put in its messages (kernel 6.9+),
// through the assembler from the datagrams' bytes, and counts the lines
// its msgids say never arrived: gaps inside the report only (the lines
// before it were the filter's to drop), across the counter's wrap.
func TestExtradata(t *testing.T) {
	for _, c := range []struct {
		name   string
		msgids []uint32 // of the trigger, a context line, the panic, the end marker
		lost   int
	}{
		{"none lost", []uint32{20, 21, 22, 23}, 0},
		{"two lost", []uint32{20, 23, 24, 25}, 2},
		{"out of order", []uint32{20, 22, 21, 24}, 1},
		{"wrapped", []uint32{1<<32 - 2, 1<<32 - 1, 1, 2}, 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			asm := detect.NewAssembler(netconsole.Config{}, detect.Config{})
			var got []detect.Incident
			for i, text := range []string{"sysrq: Trigger a crash", "CPU: 0 PID: 1 Comm: sh Not tainted 6.17.0-lastgasp #1", "Kernel panic - not syncing: sysrq triggered crash", "---[ end Kernel panic - not syncing: sysrq triggered crash ]---"} {
				p := fmt.Sprintf("0,%d,%d,-;%s\n node=worker-7\n cpu=0\n taskname=sh\n release=6.17.0-lastgasp\n msgid=%d\n", 300+i, 4000000+i, text, c.msgids[i])
				got = append(got, asm.Line(filter.Line{Source: node, Payload: []byte(p), Time: t0})...)
			}
			got = append(got, asm.Flush()...)
			if len(got) != 1 || got[0].NodeName != "worker-7" || got[0].Release != "6.17.0-lastgasp" || !got[0].Fatal || got[0].LinesLost != c.lost {
				t.Fatalf("%+v", got)
			}
			if n := asm.Detector.Counters().LostLines; n != uint64(c.lost) {
				t.Errorf("counted %d lost, want %d", n, c.lost)
			}
		})
	}
}
