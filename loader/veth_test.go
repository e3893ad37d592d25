package loader_test

// End-to-end tests of the XDP program on a real interface: it is attached
// to the collector's end of a veth pair (internal/testrig/testnet), and real UDP
// datagrams are sent to it from real sockets in the node's namespace.
//
// Ordering makes these tests deterministic without sleeping: the veth has
// a single queue, so the program judges packets in the order they were
// sent, and the packets it passes go up the stack in that order, each
// after the program judged it. A datagram the test waits for on a socket
// is therefore a barrier: once it arrived, every datagram sent before it
// has been judged, its record (if any) is in the ring buffer, its counters
// are counted, and if it was passed it waits on its socket.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lastgasp/lastgasp/internal/filter"
	"github.com/lastgasp/lastgasp/internal/pattern"
	"github.com/lastgasp/lastgasp/internal/testrig/testnet"
	"github.com/lastgasp/lastgasp/loader"
	"github.com/lastgasp/lastgasp/ringbuf"
)

const (
	// nodePort is netconsole's source port.
	nodePort = 6665
	// netconsolePort is where the program listens (loader.DefaultPort).
	netconsolePort = loader.DefaultPort
	// otherPort is not a netconsole port (until a test makes it one).
	otherPort = 7777
	// barrierPort is never a netconsole port: datagrams to it pass, and
	// a test waits for them to know the ones before were judged.
	barrierPort = 7000
	// timeout bounds every wait for a line or a datagram.
	timeout = 5 * time.Second
	// ringBufSize is small: these tests forward a few lines.
	ringBufSize = 1 << 20
)

// A step is one datagram the node sends, and what the program should make
// of it.
type step struct {
	port uint16
	text string
	// flag is why the line is forwarded; 0 for a line that is not.
	flag filter.Flag
	// prefix is the pattern a Match line matches.
	prefix string
}

// panicSteps is a node's boot, its panic and the lines after it. Sent in
// one go, the program forwards the matches and the context after them, and
// nothing else.
var panicSteps = []step{
	{port: netconsolePort, text: "[    0.000000] Linux version 6.1.0-18-amd64 (debian-kernel@lists.debian.org)"},
	// "panic" in the middle of a line is no match: patterns are anchored
	// at the start of the text.
	{port: netconsolePort, text: "[    0.000000] Command line: console=ttyS0 panic=-1"},
	{port: netconsolePort, text: "[    2.918231] sd 0:0:0:0: [sda] Attached SCSI disk"},
	{port: netconsolePort, text: "[    3.053091] Kernel panic - not syncing: Fatal exception", flag: filter.Match, prefix: "Kernel panic - not syncing"},
	{port: netconsolePort, text: "[    3.053124] CPU: 0 PID: 1 Comm: init Not tainted 6.1.0-18-amd64 #1  Debian 6.1.76-1", flag: filter.Context},
	{port: netconsolePort, text: "[    3.053130] Hardware name: QEMU Standard PC (i440FX + PIIX, 1996)", flag: filter.Context},
	{port: netconsolePort, text: "4,517,3053141,-;Call Trace:", flag: filter.Context},
	{port: netconsolePort, text: "[    3.060000] ---[ end Kernel panic - not syncing: Fatal exception ]---", flag: filter.Match, prefix: "---[ end Kernel panic"},
	// Not a netconsole port: passed up the stack untouched. Sent last,
	// it is also the barrier for the lines before it.
	{port: otherPort, text: "[    3.053091] Kernel panic - not syncing: Fatal exception"},
}

// TestVethNativeXDP sends a node's panic over IPv4 and IPv6 to the program
// attached natively, and checks that the ring buffer holds exactly the
// lines to forward, that the counters add up, and that the program drops
// netconsole packets (or with ForwardPass lets them through) for real.
func TestVethNativeXDP(t *testing.T) {
	for _, forwardPass := range []bool{false, true} {
		name := "drop"
		if forwardPass {
			name = "forward_pass"
		}
		t.Run(name, func(t *testing.T) { testVethNativeXDP(t, forwardPass) })
	}
}

func testVethNativeXDP(t *testing.T, forwardPass bool) {
	pair := testnet.NewPair(t)
	prog := load(t, loader.Config{ForwardPass: forwardPass})
	if a := attach(t, pair, prog, loader.ModeNative); a.Mode != loader.ModeNative {
		t.Fatalf("attached in mode %q, want %q", a.Mode, loader.ModeNative)
	}
	rd := newReader(t, prog)
	netconsole := listen(t, pair, netconsolePort)
	other := listen(t, pair, otherPort)

	var (
		wantLines []filter.Line // forwarded, in order
		wantNC    []datagram    // sent to the netconsole port, in order
		wantOther []datagram    // sent to the other port, in order
	)
	for _, s := range []*sender{newSender(t, pair, false), newSender(t, pair, true)} {
		for _, st := range panicSteps {
			s.send(t, st.port, st.text)
			d := datagram{src: s.source(), payload: st.text}
			if st.port == otherPort {
				wantOther = append(wantOther, d)
				continue
			}
			wantNC = append(wantNC, d)
			if st.flag != 0 {
				wantLines = append(wantLines, wantLine(t, s, st))
			}
		}
	}

	// The barrier: the datagrams to the other port were the last of each
	// family. They also prove the program passed them.
	for _, want := range wantOther {
		if got := receive(t, other); got != want {
			t.Errorf("port %d received %v, want %v", otherPort, got, want)
		}
	}

	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()
	for i, want := range wantLines {
		checkLine(t, i, readLine(t, ctx, rd), want)
	}
	expectNoLine(t, rd)

	// Whether the program really dropped the netconsole packets: the
	// socket on the port sees all of them with ForwardPass, else none.
	wantSocket := []datagram(nil)
	if forwardPass {
		wantSocket = wantNC
	}
	if got := queued(t, netconsole); !slices.Equal(got, wantSocket) {
		t.Errorf("socket on port %d received %d datagrams %v, want %d %v", netconsolePort, len(got), got, len(wantSocket), wantSocket)
	}

	want := expectedCounters(wantLines, len(wantNC))
	c := counters(t, prog)
	checkCounters(t, c, want)
	// Exactly the netconsole lines, kept or not: nothing else is ever
	// dropped, and none found the ring buffer full (which passes it).
	wantDropped := uint64(len(wantNC))
	minPassed := uint64(len(wantOther))
	if forwardPass {
		wantDropped = 0
		minPassed += uint64(len(wantNC))
	}
	if c.Dropped != wantDropped {
		t.Errorf("dropped = %d, want %d", c.Dropped, wantDropped)
	}
	if c.Passed < minPassed {
		t.Errorf("passed = %d, want at least %d", c.Passed, minPassed)
	}
}

// expectedCounters returns the counters that depend only on the netconsole
// lines sent: n of them, of which lines were forwarded.
func expectedCounters(lines []filter.Line, n int) loader.Counters {
	c := loader.Counters{Netconsole: uint64(n)}
	for _, l := range lines {
		switch l.Flag {
		case filter.Match:
			c.Matched++
			c.Bursts++ // with context on, every match opens or extends one
		case filter.Context:
			c.Context++
		}
	}
	return c
}

// checkCounters checks the counters that no stray packet can change, and
// that every packet got exactly one verdict.
//
// The program counts a packet and its verdict in two steps; a read between
// them would see packets one ahead. Only stray packets the kernel sends by
// itself (IPv6 multicast listener reports, on link up) could be in flight
// when the test reads, so that is not a practical concern.
func checkCounters(t *testing.T, got, want loader.Counters) {
	t.Helper()
	if got.Packets != got.Passed+got.Dropped {
		t.Errorf("packets = %d, want passed + dropped = %d + %d", got.Packets, got.Passed, got.Dropped)
	}
	type counter struct {
		name      string
		got, want uint64
	}
	for _, c := range []counter{
		{"netconsole", got.Netconsole, want.Netconsole},
		{"matched", got.Matched, want.Matched},
		{"context", got.Context, want.Context},
		{"bursts", got.Bursts, want.Bursts},
		{"malformed", got.Malformed, 0},
		{"fragments", got.Fragments, 0},
		{"ringbuf_full", got.RingbufFull, 0},
		{"truncated", got.Truncated, 0},
	} {
		if c.got != c.want {
			t.Errorf("%s = %d, want %d", c.name, c.got, c.want)
		}
	}
}

// TestPinnedTakeover restarts a collector with pinned maps and link: the
// program stays attached while no process runs, and the next one takes
// over the link, the lines written meanwhile and the counters.
func TestPinnedTakeover(t *testing.T) {
	pair := testnet.NewPair(t)
	cfg := loader.Config{PinPath: pinDir(t)}
	barrier := listen(t, pair, barrierPort)
	s := newSender(t, pair, false)

	// The first collector: attach, forward a line, and exit without
	// detaching, as a crashed or restarted one would.
	prog1 := load(t, cfg)
	a1 := attach(t, pair, prog1, loader.ModeNative)
	if _, err := os.Stat(a1.Pinned); err != nil {
		t.Fatalf("attachment pinned at %q: %v", a1.Pinned, err)
	}
	first := step{port: netconsolePort, text: "[    1.000000] Kernel panic - not syncing: first", flag: filter.Match, prefix: "Kernel panic - not syncing"}
	s.send(t, first.port, first.text)
	rd1 := newReader(t, prog1)
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()
	checkLine(t, 0, readLine(t, ctx, rd1), wantLine(t, s, first))
	before := counters(t, prog1)
	id1 := progID(t, prog1)
	if err := rd1.Close(); err != nil {
		t.Fatal(err)
	}
	if err := prog1.Close(); err != nil {
		t.Fatalf("close the first program: %v", err)
	}
	expectXDP(t, pair, testnet.XDPState{Mode: "native", ProgID: id1})

	// No collector runs: the pinned link keeps the program attached, and
	// the pinned ring buffer keeps what it forwards.
	meanwhile := step{port: netconsolePort, text: "[    2.000000] Kernel panic - not syncing: while nobody reads", flag: filter.Match, prefix: "Kernel panic - not syncing"}
	s.send(t, meanwhile.port, meanwhile.text)
	flush(t, s, barrier)

	// The second collector takes over the link and finds the line.
	prog2 := load(t, cfg)
	a2 := attach(t, pair, prog2, loader.ModeNative)
	if a2.Pinned != a1.Pinned || a2.Mode != loader.ModeNative {
		t.Errorf("took over Pinned %q Mode %q, want Pinned %q and the mode the kernel reports, native", a2.Pinned, a2.Mode, a1.Pinned)
	}
	expectXDP(t, pair, testnet.XDPState{Mode: "native", ProgID: progID(t, prog2)})
	rd2 := newReader(t, prog2)
	checkLine(t, 0, readLine(t, ctx, rd2), wantLine(t, s, meanwhile))
	expectNoLine(t, rd2)

	after := counters(t, prog2)
	if after.Netconsole != before.Netconsole+1 || after.Matched != before.Matched+1 {
		t.Errorf("counters after takeover: netconsole %d, matched %d; want %d and %d (carried over, plus one)",
			after.Netconsole, after.Matched, before.Netconsole+1, before.Matched+1)
	}
	if after.Packets < before.Packets+2 { // the line and the barrier
		t.Errorf("counters after takeover: packets %d, want at least %d", after.Packets, before.Packets+2)
	}

	if err := a2.Detach(); err != nil {
		t.Fatalf("detach: %v", err)
	}
	expectXDP(t, pair, testnet.XDPState{})
	if _, err := os.Stat(a1.Pinned); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("link pin %s after Detach: %v, want it gone", a1.Pinned, err)
	}
}

// TestRuntimeTables changes the ports and patterns of an attached program
// and checks that real traffic sees each change at once.
func TestRuntimeTables(t *testing.T) {
	pair := testnet.NewPair(t)
	// No context: every line is judged on its own, by the tables alone.
	prog := load(t, loader.Config{NoContext: true})
	attach(t, pair, prog, loader.ModeNative)
	rd := newReader(t, prog)
	other := listen(t, pair, otherPort)
	barrier := listen(t, pair, barrierPort)
	s := newSender(t, pair, false)
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()

	panicLine := step{text: "[   12.000000] Kernel panic - not syncing: sysrq triggered crash", flag: filter.Match, prefix: "Kernel panic - not syncing"}
	custom := pattern.Pattern{ID: 999, Prefix: "lastgasp-test: boom", Kind: pattern.KindPanic}
	boom := step{port: netconsolePort, text: "[   12.500000] lastgasp-test: boom", flag: filter.Match, prefix: custom.Prefix}
	sent := 0 // netconsole lines sent
	matched := 0

	t.Run("other port passes", func(t *testing.T) {
		s.send(t, otherPort, panicLine.text)
		if got := receive(t, other); got.payload != panicLine.text {
			t.Errorf("port %d received %q, want %q", otherPort, got.payload, panicLine.text)
		}
		expectNoLine(t, rd)
	})

	setPorts(t, prog, netconsolePort, otherPort)
	t.Run("added port forwards", func(t *testing.T) {
		st := panicLine
		st.port = otherPort
		s.send(t, st.port, st.text)
		sent, matched = sent+1, matched+1
		checkLine(t, 0, readLine(t, ctx, rd), wantLine(t, s, st))
		flush(t, s, barrier)
		if got := queued(t, other); len(got) != 0 {
			t.Errorf("port %d received %v, want it dropped", otherPort, got)
		}
	})

	t.Run("unknown line", func(t *testing.T) {
		s.send(t, boom.port, boom.text)
		sent++
		flush(t, s, barrier)
		expectNoLine(t, rd)
	})

	withCustom, err := pattern.NewTable(append(pattern.Default().Patterns(), custom))
	if err != nil {
		t.Fatalf("pattern table: %v", err)
	}
	setPatterns(t, prog, withCustom)
	t.Run("added pattern matches", func(t *testing.T) {
		s.send(t, boom.port, boom.text)
		sent, matched = sent+1, matched+1
		want := wantLine(t, s, boom)
		want.PatternID = custom.ID // not in the default table
		checkLine(t, 0, readLine(t, ctx, rd), want)
	})

	setPatterns(t, prog, pattern.Default())
	t.Run("removed pattern stops matching", func(t *testing.T) {
		s.send(t, boom.port, boom.text)
		sent++
		flush(t, s, barrier)
		expectNoLine(t, rd)
		// A pattern in both tables kept matching.
		st := panicLine
		st.port = netconsolePort
		s.send(t, st.port, st.text)
		sent, matched = sent+1, matched+1
		checkLine(t, 0, readLine(t, ctx, rd), wantLine(t, s, st))
	})

	setPorts(t, prog, netconsolePort)
	t.Run("removed port passes", func(t *testing.T) {
		s.send(t, otherPort, panicLine.text)
		if got := receive(t, other); got.payload != panicLine.text {
			t.Errorf("port %d received %q, want %q", otherPort, got.payload, panicLine.text)
		}
		expectNoLine(t, rd)
	})

	c := counters(t, prog)
	checkCounters(t, c, loader.Counters{Netconsole: uint64(sent), Matched: uint64(matched)})
	if c.Dropped != uint64(sent) {
		t.Errorf("dropped = %d, want %d", c.Dropped, sent)
	}
}

// TestGenericMode attaches in generic mode, and in auto mode, which on a
// veth (which has native XDP) must pick native.
func TestGenericMode(t *testing.T) {
	pair := testnet.NewPair(t)
	prog := load(t, loader.Config{})
	rd := newReader(t, prog)
	s := newSender(t, pair, true)
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()
	panicLine := step{port: netconsolePort, text: "[    5.000000] Kernel panic - not syncing: Attempted to kill init!", flag: filter.Match, prefix: "Kernel panic - not syncing"}

	for _, tc := range []struct {
		mode, want loader.XDPMode
		kernel     string // the mode the kernel reports
	}{
		{loader.ModeGeneric, loader.ModeGeneric, "generic"},
		{loader.ModeAuto, loader.ModeNative, "native"},
	} {
		a := attach(t, pair, prog, tc.mode)
		if a.Mode != tc.want {
			t.Errorf("attached with %q: mode %q, want %q", tc.mode, a.Mode, tc.want)
		}
		expectXDP(t, pair, testnet.XDPState{Mode: tc.kernel, ProgID: progID(t, prog)})
		s.send(t, panicLine.port, panicLine.text)
		checkLine(t, 0, readLine(t, ctx, rd), wantLine(t, s, panicLine))
		// Native and generic cannot be attached at once: detach first.
		if err := a.Detach(); err != nil {
			t.Fatalf("detach: %v", err)
		}
		expectXDP(t, pair, testnet.XDPState{})
	}
}

// load loads the program with cfg, with a small ring buffer and the
// loader's log in the test's, and closes it when the test ends.
func load(t *testing.T, cfg loader.Config) *loader.Program {
	t.Helper()
	if cfg.RingBufSize == 0 {
		cfg.RingBufSize = ringBufSize
	}
	cfg.Logger = slog.New(slog.NewTextHandler(t.Output(), nil))
	prog, err := loader.Load(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := prog.Close(); err != nil {
			t.Errorf("close program: %v", err)
		}
	})
	return prog
}

// attach attaches prog to the collector's end of the pair. It must run in
// the collector's namespace: the interface is looked up, and the link
// created, in the caller's.
func attach(t *testing.T, pair *testnet.Pair, prog *loader.Program, mode loader.XDPMode) *loader.Attachment {
	t.Helper()
	var a *loader.Attachment
	err := pair.Collector.Netns.Do(func() error {
		var err error
		a, err = prog.Attach(pair.Collector.Ifname, mode)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// newReader opens a ring buffer reader on prog's events, closed when the
// test ends.
func newReader(t *testing.T, prog *loader.Program) *ringbuf.Reader {
	t.Helper()
	rd, err := ringbuf.NewReader(prog.Events())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rd.Close() })
	return rd
}

// readLine reads the next forwarded line, failing the test when none comes
// before ctx is done.
func readLine(t *testing.T, ctx context.Context, rd *ringbuf.Reader) filter.Line {
	t.Helper()
	line, err := rd.Read(ctx)
	if err != nil {
		t.Fatalf("read a forwarded line: %v", err)
	}
	line.Payload = bytes.Clone(line.Payload) // it aliases the reader's buffer
	return line
}

// expectNoLine checks that the ring buffer holds no line. Call it after a
// barrier, when every line that could be there is.
func expectNoLine(t *testing.T, rd *ringbuf.Reader) {
	t.Helper()
	var extra []string
	var clock ringbuf.Clock
	_, err := rd.ReadWaiting(clock.Stamp, func(l filter.Line) {
		extra = append(extra, l.Flag.String()+" "+string(l.Payload))
	})
	if err != nil {
		t.Fatalf("read the ring buffer: %v", err)
	}
	if len(extra) > 0 {
		t.Errorf("ring buffer holds %d lines not expected: %q", len(extra), extra)
	}
}

// wantLine is the line the program should forward for st sent by s.
func wantLine(t *testing.T, s *sender, st step) filter.Line {
	t.Helper()
	l := filter.Line{Source: s.source(), Flag: st.flag, Payload: []byte(st.text)}
	if st.flag == filter.Match {
		l.PatternID = defaultPatternID(st.prefix)
	}
	return l
}

// defaultPatternID returns the id of prefix in the default table, or 0.
func defaultPatternID(prefix string) uint32 {
	for _, p := range pattern.Default().Patterns() {
		if p.Prefix == prefix {
			return p.ID
		}
	}
	return 0
}

// checkLine compares the i-th line read with the one wanted; the receive
// time only has to be recent.
func checkLine(t *testing.T, i int, got, want filter.Line) {
	t.Helper()
	if got.Source != want.Source || got.Flag != want.Flag || got.PatternID != want.PatternID ||
		got.Truncated || !bytes.Equal(got.Payload, want.Payload) {
		t.Errorf("line %d: got %s %s pattern %d truncated %v %q\n\twant %s %s pattern %d %q", i,
			got.Source, got.Flag, got.PatternID, got.Truncated, got.Payload,
			want.Source, want.Flag, want.PatternID, want.Payload)
	}
	if age := time.Since(got.Time); age < -time.Second || age > timeout+time.Second {
		t.Errorf("line %d: received at %v, %v ago", i, got.Time, age)
	}
}

// counters reads prog's counters.
func counters(t *testing.T, prog *loader.Program) loader.Counters {
	t.Helper()
	c, err := prog.Counters()
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, nc := range loader.CounterValues(c) {
		fmt.Fprintf(&b, " %s=%d", nc.Name, nc.Value)
	}
	t.Logf("counters:%s", b.String())
	return c
}

func setPorts(t *testing.T, prog *loader.Program, ports ...uint16) {
	t.Helper()
	if err := prog.SetPorts(ports); err != nil {
		t.Fatal(err)
	}
}

func setPatterns(t *testing.T, prog *loader.Program, table *pattern.Table) {
	t.Helper()
	if err := prog.SetPatterns(table); err != nil {
		t.Fatal(err)
	}
}

// progID is the kernel's id of prog's XDP program.
func progID(t *testing.T, prog *loader.Program) uint32 {
	t.Helper()
	info, err := prog.XDP().Info()
	if err != nil {
		t.Fatalf("program info: %v", err)
	}
	id, ok := info.ID()
	if !ok {
		t.Fatal("program info: the kernel gave no id")
	}
	return uint32(id)
}

// expectXDP checks what the kernel says is attached to the collector's
// interface.
func expectXDP(t *testing.T, pair *testnet.Pair, want testnet.XDPState) {
	t.Helper()
	got, err := pair.Collector.XDP()
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Errorf("XDP on %s: %+v, want %+v", pair.Collector.Ifname, got, want)
	}
}

// pinDir returns a fresh directory on the bpffs at /sys/fs/bpf, mounting
// it if need be, removed with all its pins when the test ends.
func pinDir(t *testing.T) string {
	t.Helper()
	const root = "/sys/fs/bpf"
	var st unix.Statfs_t
	if err := unix.Statfs(root, &st); err != nil {
		t.Fatalf("statfs %s: %v", root, err)
	}
	if st.Type != unix.BPF_FS_MAGIC {
		if err := unix.Mount("bpf", root, "bpf", 0, ""); err != nil {
			t.Fatalf("mount bpffs on %s: %v", root, err)
		}
	}
	dir, err := os.MkdirTemp(root, "lastgasp-test-")
	if err != nil {
		t.Fatalf("pin directory: %v", err)
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("remove pin directory: %v", err)
		}
	})
	return filepath.Join(dir, "pins")
}

// A datagram is what a socket received: who from, and what.
type datagram struct {
	src     netip.AddrPort
	payload string
}

// String shows the datagram in a test failure.
func (d datagram) String() string { return d.src.String() + " " + strconv.Quote(d.payload) }

// sender sends datagrams from the node's port nodePort, as netconsole does.
type sender struct {
	conn *net.UDPConn
	dst  netip.Addr
}

// newSender opens a socket in the node's namespace, on its IPv4 or IPv6
// address. It is not connected: one socket sends to any port from
// nodePort, and an ICMP port unreachable (for a datagram passed to a port
// nobody listens on) cannot fail a later send.
func newSender(t *testing.T, pair *testnet.Pair, ipv6 bool) *sender {
	t.Helper()
	network, src, dst := "udp4", pair.Node.IPv4, pair.Collector.IPv4
	if ipv6 {
		network, src, dst = "udp6", pair.Node.IPv6, pair.Collector.IPv6
	}
	var conn *net.UDPConn
	err := pair.Node.Netns.Do(func() error {
		var err error
		conn, err = net.ListenUDP(network, net.UDPAddrFromAddrPort(netip.AddrPortFrom(src, nodePort)))
		return err
	})
	if err != nil {
		t.Fatalf("open the node's socket: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	return &sender{conn: conn, dst: dst}
}

// source is where the node's datagrams come from.
func (s *sender) source() netip.AddrPort {
	return s.conn.LocalAddr().(*net.UDPAddr).AddrPort()
}

// send sends text to the collector's port.
func (s *sender) send(t *testing.T, port uint16, text string) {
	t.Helper()
	if _, err := s.conn.WriteToUDPAddrPort([]byte(text), netip.AddrPortFrom(s.dst, port)); err != nil {
		t.Fatalf("send to port %d: %v", port, err)
	}
}

// flush sends a datagram to the barrier port and waits for it: then every
// datagram s sent before has been judged.
func flush(t *testing.T, s *sender, barrier *net.UDPConn) {
	t.Helper()
	const text = "barrier"
	s.send(t, barrierPort, text)
	if got := receive(t, barrier); got.payload != text {
		t.Fatalf("barrier port received %q, want %q", got.payload, text)
	}
}

// listen opens a socket on port in the collector's namespace, for IPv4
// and IPv6 both.
//
// It asks for dual stack itself rather than rely on net.ListenUDP("udp"):
// that chooses by a probe the Go runtime makes once a process, in whatever
// namespace the thread making the first socket is in, and a namespace with
// its loopback down makes it conclude there is no IPv6 (every later
// wildcard listener is then IPv4 only).
func listen(t *testing.T, pair *testnet.Pair, port uint16) *net.UDPConn {
	t.Helper()
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0)
		}); err != nil {
			return err
		}
		return serr
	}}
	var conn *net.UDPConn
	err := pair.Collector.Netns.Do(func() error {
		pc, err := lc.ListenPacket(context.Background(), "udp6", net.JoinHostPort("::", strconv.Itoa(int(port))))
		if err != nil {
			return err
		}
		conn = pc.(*net.UDPConn)
		return nil
	})
	if err != nil {
		t.Fatalf("listen on the collector's port %d: %v", port, err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// receive waits for the next datagram on conn.
func receive(t *testing.T, conn *net.UDPConn) datagram {
	t.Helper()
	if err := conn.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 2048)
	n, from, err := conn.ReadFromUDPAddrPort(buf)
	if err != nil {
		t.Fatalf("receive on %s: %v", conn.LocalAddr(), err)
	}
	return datagram{src: unmap(from), payload: string(buf[:n])}
}

// queued returns the datagrams waiting on conn, without waiting for more
// (a read deadline cannot do that: one already passed fails the read
// before it is tried).
func queued(t *testing.T, conn *net.UDPConn) []datagram {
	t.Helper()
	rc, err := conn.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var got []datagram
	buf := make([]byte, 2048)
	for {
		var (
			n     int
			from  unix.Sockaddr
			rerr  error
			ready = func(fd uintptr) bool {
				n, from, rerr = unix.Recvfrom(int(fd), buf, unix.MSG_DONTWAIT)
				return true // one try: never wait
			}
		)
		if err := rc.Read(ready); err != nil {
			t.Fatal(err)
		}
		if errors.Is(rerr, unix.EAGAIN) {
			return got
		}
		if rerr != nil {
			t.Fatalf("receive on %s: %v", conn.LocalAddr(), rerr)
		}
		got = append(got, datagram{src: sockaddrPort(from), payload: string(buf[:n])})
	}
}

// sockaddrPort converts a socket address; IPv4-mapped addresses (a dual
// stack socket's IPv4 peers) become plain IPv4.
func sockaddrPort(sa unix.Sockaddr) netip.AddrPort {
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port))
	case *unix.SockaddrInet6:
		return unmap(netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), uint16(sa.Port)))
	}
	return netip.AddrPort{}
}

func unmap(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// TestSetPatternsFullTables: a full table (PATTERNS_MAX patterns) replaced
// by another with no pattern in common: the trie never holds both.
func TestSetPatternsFullTables(t *testing.T) {
	testnet.RequireRoot(t)
	full := func(prefix string) *pattern.Table {
		ps := make([]pattern.Pattern, pattern.MaxPatterns)
		for i := range ps {
			ps[i] = pattern.Pattern{ID: uint32(i + 1), Prefix: fmt.Sprintf("%s %d", prefix, i), Kind: pattern.KindPanic}
		}
		tab, err := pattern.NewTable(ps)
		if err != nil {
			t.Fatal(err)
		}
		return tab
	}
	prog, err := loader.Load(loader.Config{Patterns: full("first"), RingBufSize: 1 << 16})
	if err != nil {
		t.Fatal(err)
	}
	defer prog.Close()
	setPatterns(t, prog, full("second"))
	setPatterns(t, prog, pattern.Default())
}
