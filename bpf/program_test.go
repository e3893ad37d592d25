package bpf_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"

	"github.com/lastgasp/lastgasp/bpf"
	"github.com/lastgasp/lastgasp/internal/filter"
	"github.com/lastgasp/lastgasp/internal/pattern"
	"github.com/lastgasp/lastgasp/internal/pcapscan"
	"github.com/lastgasp/lastgasp/internal/testrig/packettest"
	"github.com/lastgasp/lastgasp/loader"
)

// XDP verdicts.
const (
	xdpDrop = 1
	xdpPass = 2
)

// harness runs frames through the real program with BPF_PROG_TEST_RUN.
type harness struct {
	t    testing.TB // where failures go; a fuzz target sets it per input
	sc   *pcapscan.Scanner
	last loader.Counters
}

// newHarness loads a program for tb's test, closed when the test ends.
func newHarness(tb testing.TB, cfg loader.Config) *harness {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("loading BPF programs needs root")
	}
	h, err := loadHarness(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	h.t = tb
	tb.Cleanup(func() { h.sc.Close() })
	return h
}

// loadHarness loads a program; the caller closes h.sc.
func loadHarness(cfg loader.Config) (*harness, error) {
	if cfg.RingBufSize == 0 {
		cfg.RingBufSize = 1 << 20
	}
	sc, err := pcapscan.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("load program: %w", err)
	}
	return &harness{sc: sc}, nil
}

// send runs one frame and returns the verdict and the lines forwarded.
func (h *harness) send(frame []byte) (uint32, []filter.Line) {
	h.t.Helper()
	var lines []filter.Line
	verdict, err := h.sc.Frame(frame, time.Unix(0, 0), func(l filter.Line) {
		l.Payload = bytes.Clone(l.Payload)
		lines = append(lines, l)
	})
	if err != nil {
		h.t.Fatalf("run frame: %v", err)
	}
	return verdict, lines
}

// delta returns the counters' change since the previous call.
func (h *harness) delta() loader.Counters {
	h.t.Helper()
	now, err := h.sc.Program().Counters()
	if err != nil {
		h.t.Fatal(err)
	}
	d := loader.Counters{
		Packets:     now.Packets - h.last.Packets,
		Passed:      now.Passed - h.last.Passed,
		Dropped:     now.Dropped - h.last.Dropped,
		Malformed:   now.Malformed - h.last.Malformed,
		Fragments:   now.Fragments - h.last.Fragments,
		Netconsole:  now.Netconsole - h.last.Netconsole,
		Matched:     now.Matched - h.last.Matched,
		Context:     now.Context - h.last.Context,
		RingbufFull: now.RingbufFull - h.last.RingbufFull,
		Truncated:   now.Truncated - h.last.Truncated,
		Bursts:      now.Bursts - h.last.Bursts,
		LongHeader:  now.LongHeader - h.last.LongHeader,
		NotLocal:    now.NotLocal - h.last.NotLocal,
	}
	h.last = now
	return d
}

func patternID(t *testing.T, prefix string) uint32 {
	t.Helper()
	for _, p := range pattern.Default().Patterns() {
		if p.Prefix == prefix {
			return p.ID
		}
	}
	t.Fatalf("no default pattern %q", prefix)
	return 0
}

const panicLine = "[    3.053091] Kernel panic - not syncing: Fatal exception\n"

// outcome is what one frame should do.
type outcome int

const (
	forwardMatch  outcome = iota // forwarded as a match of "Kernel panic - not syncing"
	dropOrdinary                 // a netconsole line, not forwarded, dropped
	passOther                    // not netconsole: passed, nothing counted
	passMalformed                // passed and counted malformed
	passFragment                 // passed and counted as a fragment
)

// TestPacketMatrix runs every shape of packet through the program (with
// context bursts off, so each frame is judged alone) and checks verdict,
// counters and forwarded line.
func TestPacketMatrix(t *testing.T) {
	h := newHarness(t, loader.Config{NoContext: true})
	panicID := patternID(t, "Kernel panic - not syncing")

	withUDPLen := func(frame []byte, l3 int, udpLen uint16) []byte {
		binary.BigEndian.PutUint16(frame[l3+4:], udpLen)
		return frame
	}
	v4 := func(u packettest.UDP) []byte { return u.Frame() }
	chain := func(n int) []uint8 {
		ext := make([]uint8, n)
		for i := range ext {
			ext[i] = packettest.ProtoDstOpts
		}
		return ext
	}

	cases := []struct {
		name  string
		frame []byte
		want  outcome
	}{
		{"ipv4", packettest.Line(panicLine).Frame(), forwardMatch},
		{"ipv4 ordinary line", packettest.Line("[    3.044631] RAX: 0000000000000000\n").Frame(), dropOrdinary},
		{"ipv4 options", v4(packettest.UDP{IPv4Options: bytes.Repeat([]byte{1}, 40), Payload: []byte(panicLine)}), forwardMatch},
		{"ipv6", packettest.UDP{Src: packettest.NodeV6, Payload: []byte(panicLine)}.Frame(), forwardMatch},
		{"ipv6 extension headers", packettest.UDP{Src: packettest.NodeV6, IPv6Ext: []uint8{packettest.ProtoHopOpts, packettest.ProtoRouting, packettest.ProtoAH, packettest.ProtoDstOpts}, Payload: []byte(panicLine)}.Frame(), forwardMatch},
		{"ipv6 8 extension headers", packettest.UDP{Src: packettest.NodeV6, IPv6Ext: chain(8), Payload: []byte(panicLine)}.Frame(), forwardMatch},
		{"ipv6 9 extension headers", packettest.UDP{Src: packettest.NodeV6, IPv6Ext: chain(9), Payload: []byte(panicLine)}.Frame(), passMalformed},
		{"ipv6 fragment header", packettest.UDP{Src: packettest.NodeV6, IPv6Ext: []uint8{packettest.ProtoFragment}, Payload: []byte(panicLine)}.Frame(), passFragment},
		{"vlan", packettest.UDP{VLANs: []uint16{42}, Payload: []byte(panicLine)}.Frame(), forwardMatch},
		{"qinq", packettest.UDP{VLANs: []uint16{42, 7}, Payload: []byte(panicLine)}.Frame(), forwardMatch},
		{"qinq ipv6", packettest.UDP{Src: packettest.NodeV6, VLANs: []uint16{42, 7}, Payload: []byte(panicLine)}.Frame(), forwardMatch},
		{"three vlan tags", packettest.UDP{VLANs: []uint16{1, 2, 3}, Payload: []byte(panicLine)}.Frame(), passOther},
		{"wrong port", packettest.UDP{DstPort: 6667, Payload: []byte(panicLine)}.Frame(), passOther},
		{"source port 6666 only", packettest.UDP{SrcPort: 6666, DstPort: 514, Payload: []byte(panicLine)}.Frame(), passOther},
		{"not udp", packettest.UDP{Protocol: packettest.ProtoTCP, Payload: []byte(panicLine)}.Frame(), passOther},
		{"ipv6 not udp", packettest.UDP{Src: packettest.NodeV6, Protocol: packettest.ProtoTCP, Payload: []byte(panicLine)}.Frame(), passOther},
		{"arp", append(packettest.Ethernet(packettest.EtherARP, nil), make([]byte, 28)...), passOther},
		{"ipv4 more fragments", packettest.UDP{IPv4MoreFragments: true, Payload: []byte(panicLine)}.Frame(), passFragment},
		{"ipv4 later fragment", packettest.UDP{IPv4FragOffset: 185, Payload: []byte(panicLine)}.Frame(), passFragment},
		{"ethernet padding", append(packettest.Line("Kernel panic - not syncing").Frame(), make([]byte, 30)...), forwardMatch},
		{"ipv4 version 5", func() []byte { f := packettest.Line(panicLine).Frame(); f[14] = 0x55; return f }(), passMalformed},
		{"ipv4 ihl 4", func() []byte { f := packettest.Line(panicLine).Frame(); f[14] = 0x44; return f }(), passMalformed},
		{"ipv4 ihl past packet", append(packettest.Ethernet(packettest.EtherIPv4, nil), 0x4f, 0, 0, 20, 0, 0, 0, 0, 64, 17, 0, 0, 10, 99, 0, 2, 10, 99, 0, 1), passMalformed},
		{"ipv4 tot_len short", func() []byte {
			f := packettest.Line(panicLine).Frame()
			binary.BigEndian.PutUint16(f[16:], 19)
			return f
		}(), passMalformed},
		{"ipv4 tot_len long", func() []byte {
			f := packettest.Line(panicLine).Frame()
			binary.BigEndian.PutUint16(f[16:], 1500)
			return f
		}(), passMalformed},
		{"udp len 7", withUDPLen(packettest.Line(panicLine).Frame(), 34, 7), passMalformed},
		{"udp len past ip", withUDPLen(packettest.Line(panicLine).Frame(), 34, uint16(8+len(panicLine)+1)), passMalformed},
		{"udp len short", withUDPLen(packettest.Line(panicLine).Frame(), 34, 8+10), dropOrdinary}, // "[    3.053": no text
		{"ipv6 version 4", func() []byte {
			f := packettest.UDP{Src: packettest.NodeV6, Payload: []byte(panicLine)}.Frame()
			f[14] = 0x40
			return f
		}(), passMalformed},
		{"ipv6 payload_len long", func() []byte {
			f := packettest.UDP{Src: packettest.NodeV6, Payload: []byte(panicLine)}.Frame()
			binary.BigEndian.PutUint16(f[18:], 1400)
			return f
		}(), passMalformed},
		{"ipv6 payload_len 0", func() []byte {
			f := packettest.UDP{Src: packettest.NodeV6, Payload: []byte(panicLine)}.Frame()
			binary.BigEndian.PutUint16(f[18:], 0)
			return f
		}(), passMalformed},
		{"ipv6 extension header past packet", func() []byte {
			f := packettest.UDP{Src: packettest.NodeV6, IPv6Ext: []uint8{packettest.ProtoHopOpts}, Payload: []byte(panicLine)}.Frame()
			f[14+40+1] = 255 // hop-by-hop length: 2 KiB
			return f
		}(), passMalformed},
		{"zero-length payload", packettest.Line("").Frame(), dropOrdinary},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h.delta()
			verdict, lines := h.send(c.frame)
			d := h.delta()
			if d.Packets != 1 || d.Passed+d.Dropped != 1 {
				t.Errorf("counters: %+v: want 1 packet and 1 verdict", d)
			}
			switch c.want {
			case forwardMatch:
				if verdict != xdpDrop || len(lines) != 1 || d.Netconsole != 1 || d.Matched != 1 {
					t.Fatalf("verdict %d, %d lines, counters %+v: want a dropped, forwarded match", verdict, len(lines), d)
				}
				if l := lines[0]; l.Flag != filter.Match || l.PatternID != panicID {
					t.Errorf("line %+v: want a match of pattern %d", l, panicID)
				}
				if !bytes.HasSuffix(lines[0].Payload, []byte("Kernel panic - not syncing")) && !bytes.Equal(lines[0].Payload, []byte(panicLine)) {
					t.Errorf("payload %q: want the datagram's payload, no more", lines[0].Payload)
				}
			case dropOrdinary:
				if verdict != xdpDrop || len(lines) != 0 || d.Netconsole != 1 || d.Matched != 0 {
					t.Errorf("verdict %d, %d lines, counters %+v: want an ordinary line dropped", verdict, len(lines), d)
				}
			case passOther:
				if verdict != xdpPass || len(lines) != 0 || d.Netconsole != 0 || d.Malformed != 0 || d.Fragments != 0 {
					t.Errorf("verdict %d, %d lines, counters %+v: want passed untouched", verdict, len(lines), d)
				}
			case passMalformed:
				if verdict != xdpPass || len(lines) != 0 || d.Malformed != 1 || d.Netconsole != 0 {
					t.Errorf("verdict %d, %d lines, counters %+v: want passed as malformed", verdict, len(lines), d)
				}
			case passFragment:
				if verdict != xdpPass || len(lines) != 0 || d.Fragments != 1 || d.Netconsole != 0 {
					t.Errorf("verdict %d, %d lines, counters %+v: want passed as a fragment", verdict, len(lines), d)
				}
			}
		})
	}
}

// TestTruncatedEverywhere cuts good frames at every byte from the end of
// the Ethernet header on: never forwarded, never dropped, always counted.
func TestTruncatedEverywhere(t *testing.T) {
	h := newHarness(t, loader.Config{NoContext: true})
	frames := map[string][]byte{
		"ipv4":      packettest.UDP{IPv4Options: []byte{1, 1, 1, 1}, Payload: []byte(panicLine)}.Frame(),
		"ipv6":      packettest.UDP{Src: packettest.NodeV6, IPv6Ext: []uint8{packettest.ProtoHopOpts}, Payload: []byte(panicLine)}.Frame(),
		"qinq ipv4": packettest.UDP{VLANs: []uint16{1, 2}, Payload: []byte(panicLine)}.Frame(),
		"vlan ipv6": packettest.UDP{Src: packettest.NodeV6, VLANs: []uint16{1}, Payload: []byte(panicLine)}.Frame(),
	}
	for name, full := range frames {
		for n := 14; n < len(full); n++ {
			h.delta()
			verdict, lines := h.send(full[:n])
			d := h.delta()
			if verdict != xdpPass || len(lines) != 0 || d.Malformed != 1 {
				t.Errorf("%s cut to %d of %d bytes: verdict %d, %d lines, counters %+v: want passed as malformed", name, n, len(full), verdict, len(lines), d)
			}
		}
	}
}

// TestPayloadLengths checks the smallest and largest payloads are carried
// whole, and longer ones cut and flagged.
func TestPayloadLengths(t *testing.T) {
	h := newHarness(t, loader.Config{NoContext: true})
	for _, n := range []int{26, 1000, filter.MaxPayload, filter.MaxPayload + 1, 1472} {
		payload := "Kernel panic - not syncing" + strings.Repeat("x", n-26)
		h.delta()
		_, lines := h.send(packettest.Line(payload).Frame())
		d := h.delta()
		if len(lines) != 1 {
			t.Fatalf("%d-byte payload: %d lines forwarded, want 1", n, len(lines))
		}
		l := lines[0]
		truncated := n > filter.MaxPayload
		want := payload[:min(n, filter.MaxPayload)]
		if string(l.Payload) != want || l.Truncated != truncated || (d.Truncated == 1) != truncated {
			t.Errorf("%d-byte payload: got %d bytes, truncated %v (counter %d); want %d bytes, truncated %v", n, len(l.Payload), l.Truncated, d.Truncated, len(want), truncated)
		}
	}
}

// TestFormats checks the message text is found in every netconsole format.
func TestFormats(t *testing.T) {
	h := newHarness(t, loader.Config{NoContext: true})
	cases := []struct {
		payload string
		match   string // prefix of the pattern that must match; "" for none
	}{
		{"[    3.053091] Kernel panic - not syncing: Fatal exception\n", "Kernel panic - not syncing"},
		{"Kernel panic - not syncing: Fatal exception\n", "Kernel panic - not syncing"},
		{"[12345678.123456] Kernel panic - not syncing: x\n", "Kernel panic - not syncing"},
		{"[    3.053091][    T1] Kernel panic - not syncing: x\n", "Kernel panic - not syncing"},
		{"[    3.053091][  C0] BUG: soft lockup - CPU#0 stuck for 22s!\n", "BUG: soft lockup"},
		{"0,390,3330845,-;Kernel panic - not syncing: sysrq triggered crash\n", "Kernel panic - not syncing"},
		{"0,390,3330845,-,ncfrag=0/1400;Kernel panic - not syncing: long\n", "Kernel panic - not syncing"},
		{"6,389,3330270,-,caller=T1;sysrq: Trigger a crash\n SUBSYSTEM=x\n DEVICE=y\n", "sysrq: Trigger a crash"},
		{"6.1.0-56-amd64,0,390,3330845,-;Kernel panic - not syncing: with release\n", "Kernel panic - not syncing"},
		// Lines that merely mention a failure.
		{"[    0.000000] Command line: console=ttyS0 panic=-1 loglevel=7\n", ""},
		{"[    0.000000] Kernel command line: panic=-1 oops=panic\n", ""},
		{"[    3.000000] crashmod: Kernel panic - not syncing is what we test\n", ""},
		{"4,12,0,-;Command line: console=ttyS0 panic=-1\n", ""},
		// Headers without text, and near misses.
		{"[    3.053091] ", ""},
		{"0,390,3330845,-;", ""},
		{"[    3.053091]Kernel panic - not syncing: no space\n", "Kernel panic - not syncing"},
		{"[    3.053091]  Kernel panic - not syncing: two spaces\n", ""},
		{"[ unterminated Kernel panic - not syncing\n", ""},
		{"3 Kernel panic - not syncing: digit then space\n", ""},
		{"kernel panic - not syncing: lower case\n", ""},
	}
	for _, c := range cases {
		_, lines := h.send(packettest.Line(c.payload).Frame())
		switch {
		case c.match == "" && len(lines) != 0:
			t.Errorf("%q: forwarded as pattern %d, want nothing", c.payload, lines[0].PatternID)
		case c.match != "" && (len(lines) != 1 || lines[0].PatternID != patternID(t, c.match)):
			t.Errorf("%q: forwarded %+v, want a match of %q", c.payload, lines, c.match)
		}
		// The Go matcher must agree with the kernel on every one.
		p, ok := pattern.Default().Match([]byte(c.payload))
		if ok != (c.match != "") || (ok && p.Prefix != c.match) {
			t.Errorf("%q: Go matcher says %q, %v; want %q", c.payload, p.Prefix, ok, c.match)
		}
	}
}

// TestEveryDefaultPattern checks each default pattern matches a line that
// starts with it, as itself (the longest prefix wins).
func TestEveryDefaultPattern(t *testing.T) {
	h := newHarness(t, loader.Config{NoContext: true})
	for _, p := range pattern.Default().Patterns() {
		for _, payload := range []string{
			fmt.Sprintf("[ 1234.567890] %s|rest of the line\n", p.Prefix),
			fmt.Sprintf("4,77,1234567890,-;%s|rest of the line\n", p.Prefix),
		} {
			for _, src := range []netip.Addr{packettest.NodeV4, packettest.NodeV6} {
				_, lines := h.send(packettest.UDP{Src: src, Payload: []byte(payload)}.Frame())
				if len(lines) != 1 || lines[0].PatternID != p.ID || lines[0].Source.Addr() != src {
					t.Errorf("%q from %v: forwarded %+v, want pattern %d", payload, src, lines, p.ID)
				}
			}
		}
	}
}

// TestBursts checks a match opens a burst of context lines from the same
// source only, that a match within a burst starts it again, and that it
// closes by count and by time.
func TestBursts(t *testing.T) {
	const context = 5
	h := newHarness(t, loader.Config{BurstLines: context, ContextLines: context, BurstTimeout: 200 * time.Millisecond})
	other := netip.MustParseAddr("10.99.0.3")
	ordinary := func(src netip.Addr, i int) []byte {
		return packettest.UDP{Src: src, Payload: []byte(fmt.Sprintf("[    3.%06d] ordinary line %d\n", i, i))}.Frame()
	}
	flags := func(frames ...[]byte) string {
		var s []string
		for _, f := range frames {
			_, lines := h.send(f)
			switch {
			case len(lines) == 0:
				s = append(s, "-")
			default:
				s = append(s, lines[0].Flag.String()[:1])
			}
		}
		return strings.Join(s, "")
	}
	match := packettest.Line(panicLine).Frame()

	// Start: nothing before the match, five lines after it, then nothing.
	got := flags(ordinary(packettest.NodeV4, 0), match,
		ordinary(packettest.NodeV4, 1), ordinary(packettest.NodeV4, 2), ordinary(packettest.NodeV4, 3),
		ordinary(packettest.NodeV4, 4), ordinary(packettest.NodeV4, 5), ordinary(packettest.NodeV4, 6))
	if got != "-mccccc-" {
		t.Errorf("burst start: %s, want -mccccc-", got)
	}
	if d := h.delta(); d.Bursts != 1 || d.Context != context || d.Matched != 1 {
		t.Errorf("burst counters %+v", d)
	}

	// Extension: a match two lines in gives five more after it. Lines
	// from another source in between are not context.
	got = flags(match, ordinary(packettest.NodeV4, 1), ordinary(other, 1), match,
		ordinary(packettest.NodeV4, 2), ordinary(packettest.NodeV4, 3), ordinary(packettest.NodeV4, 4),
		ordinary(packettest.NodeV4, 5), ordinary(packettest.NodeV4, 6), ordinary(packettest.NodeV4, 7))
	if got != "mc-mccccc-" {
		t.Errorf("burst extension: %s, want mc-mccccc-", got)
	}

	// Expiry by time: the burst timeout passes with lines left.
	got = flags(match, ordinary(packettest.NodeV4, 1))
	time.Sleep(300 * time.Millisecond) // the program's clock is the kernel's; nothing to wait on
	got += flags(ordinary(packettest.NodeV4, 2))
	if got != "mc-" {
		t.Errorf("burst expiry: %s, want mc-", got)
	}

	// An empty datagram within a burst is context too, carried empty.
	h.send(match)
	_, lines := h.send(packettest.Line("").Frame())
	if len(lines) != 1 || lines[0].Flag != filter.Context || len(lines[0].Payload) != 0 {
		t.Errorf("empty line in a burst: %+v, want one empty context line", lines)
	}
}

// TestBurstSourcesEvicted checks that Config.BurstSources sizes the LRU
// of bursts: with 32 of them, the burst of a source whose match was 1,000
// sources ago is forgotten, that of the latest one is not, and every
// match is forwarded whatever the LRU holds.
func TestBurstSourcesEvicted(t *testing.T) {
	h := newHarness(t, loader.Config{BurstSources: 32})
	src := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, 200, byte(i >> 8), byte(i)}) }
	h.delta()
	for i := range 1000 {
		if _, lines := h.send(packettest.UDP{Src: src(i), Payload: []byte(panicLine)}.Frame()); len(lines) != 1 {
			t.Fatalf("match from source %d: %d lines forwarded, want 1", i, len(lines))
		}
	}
	if d := h.delta(); d.Matched != 1000 || d.Bursts != 1000 {
		t.Fatalf("counters %+v: want 1000 matches, 1000 bursts", d)
	}
	line := []byte("[    3.1] RIP: 0010:x\n")
	if _, lines := h.send(packettest.UDP{Src: src(999), Payload: line}.Frame()); len(lines) != 1 {
		t.Errorf("the latest source's next line: %d lines forwarded, want 1 (context)", len(lines))
	}
	if _, lines := h.send(packettest.UDP{Src: src(0), Payload: line}.Frame()); len(lines) != 0 {
		t.Errorf("the first source's next line: forwarded as %v, want its burst evicted from a 32-source LRU", lines[0].Flag)
	}
}

// TestRingBufferFull checks that a line that finds no room is counted and
// passed to the stack, not lost silently.
func TestRingBufferFull(t *testing.T) {
	h := newHarness(t, loader.Config{NoContext: true, RingBufSize: uint32(os.Getpagesize())})
	prog := h.sc.Program()
	// Fill the ring without reading it: run the program directly.
	var full, verdicts []uint32
	for range 64 { // a record a line: more than a page's worth
		v, err := prog.XDP().Run(&ebpf.RunOptions{Data: packettest.Line(panicLine).Frame()})
		if err != nil {
			t.Fatal(err)
		}
		verdicts = append(verdicts, v)
	}
	d := h.delta()
	for _, v := range verdicts {
		if v == xdpPass {
			full = append(full, v)
		}
	}
	if d.RingbufFull == 0 || d.RingbufFull != uint64(len(full)) || d.Matched != 64 {
		t.Errorf("verdicts %v, counters %+v: want every line without room passed and counted", verdicts, d)
	}
}

// TestForwardPass checks the pass mode lets every netconsole line up the
// stack, forwarded or not.
func TestForwardPass(t *testing.T) {
	h := newHarness(t, loader.Config{NoContext: true, ForwardPass: true, Ports: []uint16{6666, 514}})
	for _, f := range [][]byte{
		packettest.Line(panicLine).Frame(),
		packettest.Line("ordinary\n").Frame(),
		packettest.UDP{DstPort: 514, Payload: []byte(panicLine)}.Frame(),
	} {
		verdict, _ := h.send(f)
		if verdict != xdpPass {
			t.Errorf("verdict %d, want XDP_PASS", verdict)
		}
	}
	if d := h.delta(); d.Netconsole != 3 || d.Matched != 2 || d.Dropped != 0 {
		t.Errorf("counters %+v: want 3 netconsole lines, 2 matched, none dropped", d)
	}
}

// TestLargePatternID checks pattern ids keep all 32 bits on the way
// through the ring buffer (a 16-bit record field once turned id 65537
// into 1, another pattern, and 65536 into 0, a lost line).
func TestLargePatternID(t *testing.T) {
	h := newHarness(t, loader.Config{NoContext: true})
	table, err := pattern.NewTable([]pattern.Pattern{
		{ID: 1, Prefix: "Oops: ", Kind: pattern.KindOops},
		{ID: 65536, Prefix: "Kernel panic - not syncing", Kind: pattern.KindPanic},
		{ID: 65537, Prefix: "BUG: ", Kind: pattern.KindBug},
		{ID: 1 << 31, Prefix: "WARNING: CPU: ", Kind: pattern.KindWarning},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := h.sc.Program().SetPatterns(table); err != nil {
		t.Fatal(err)
	}
	for text, id := range map[string]uint32{
		panicLine:                        65536,
		"[    1.000000] BUG: x\n":        65537,
		"[    1.000000] WARNING: CPU: 0": 1 << 31,
		"[    1.000000] Oops: 0000\n":    1,
	} {
		if _, lines := h.send(packettest.Line(text).Frame()); len(lines) != 1 || lines[0].PatternID != id {
			t.Errorf("%q: forwarded %+v, want pattern %d", text, lines, id)
		}
	}
}

// TestLongHeaders checks the header window holds the longest header the
// kernel sends (netconsole's release prepend of up to 64 bytes, then every
// field at its longest), and that a payload that starts like a header but
// has no end in the window is counted in long_header and passed, never
// dropped; and that a burst still takes it as context.
func TestLongHeaders(t *testing.T) {
	h := newHarness(t, loader.Config{ContextLines: 2})
	release := "6.1.0-" + strings.Repeat("r", 64-6)
	longest := release + ",191,18446744073709551615,18446744073709551615,c,caller=T4294967295,ncfrag=1000/1000;"
	if len(longest) != 149 {
		t.Fatalf("the longest header is %d bytes, want 149", len(longest))
	}
	unknown := "4" + strings.Repeat(",", 200) + ";Kernel panic - not syncing: x\n"

	for _, c := range []struct {
		name    string
		payload string
		verdict uint32
		flag    filter.Flag // 0: nothing forwarded
		long    uint64
	}{
		{"long header, no end in the window", unknown, xdpPass, 0, 1},
		{"short digits, no header", "12345\n", xdpDrop, 0, 0},
		{"longest header", longest + "Kernel panic - not syncing: Fatal exception\n", xdpDrop, filter.Match, 0},
		// A burst is open now (the match above): context, forwarded.
		{"long header in a burst", "1" + strings.Repeat("x", 300), xdpDrop, filter.Context, 1},
		{"ordinary line in a burst", longest + "RIP: 0010:x\n", xdpDrop, filter.Context, 0},
	} {
		h.delta()
		verdict, lines := h.send(packettest.Line(c.payload).Frame())
		d := h.delta()
		got := filter.Flag(0)
		if len(lines) == 1 {
			got = lines[0].Flag
		}
		if verdict != c.verdict || len(lines) > 1 || got != c.flag || d.LongHeader != c.long {
			t.Errorf("%s: verdict %d, %d lines (%v), long_header %d; want verdict %d, %v, long_header %d",
				c.name, verdict, len(lines), got, d.LongHeader, c.verdict, c.flag, c.long)
		}
		if _, ok := pattern.Default().Match([]byte(c.payload)); ok != (c.flag == filter.Match) {
			t.Errorf("%s: Go matcher says %v, kernel %v", c.name, ok, c.flag)
		}
	}
}

// TestReportsForwardedToTheirEnd runs every real IPv4 capture through the
// program with the default configuration and checks that every line of a
// kernel report, from the first line that matches up to the kernel's end
// marker ("---[ end trace ...", "---[ end Kernel panic ..."), is forwarded,
// and the ContextLines lines after the marker too. With a fixed burst of
// 20 lines, 34 lines of the Oops in null-oops-panic (its trace and its
// registers) never reached the ring buffer.
func TestReportsForwardedToTheirEnd(t *testing.T) {
	files, err := filepath.Glob("../testdata/netconsole/*.pcap")
	if err != nil {
		t.Fatal(err)
	}
	more, _ := filepath.Glob("../testdata/kernel/*-v4.pcap")
	files = append(files, more...)
	if len(files) < 10 {
		t.Fatalf("%d captures found, want the testdata sets", len(files))
	}
	table := pattern.Default()
	for _, file := range files {
		t.Run(strings.TrimSuffix(filepath.Base(file), ".pcap"), func(t *testing.T) {
			h := newHarness(t, loader.Config{})
			frames, err := packettest.ReadCapture(file)
			if err != nil {
				t.Fatal(err)
			}
			// tail: lines still due after an end marker; -1 outside a report.
			inReport, tail, checked, ends := false, -1, 0, 0
			for i, fr := range frames {
				payload := packettest.UDPPayload(fr.Frame)
				if payload == nil {
					continue
				}
				_, lines := h.send(fr.Frame)
				_, match := table.Match(payload)
				end := pattern.ReportEnd(payload)
				if match && !end {
					inReport, tail = true, -1
				}
				due := inReport || match || tail > 0
				if due {
					checked++
					if len(lines) != 1 || !bytes.Equal(lines[0].Payload, payload) {
						t.Errorf("frame %d %q: %d lines forwarded, want it (a line of a report)", i, payload, len(lines))
					}
				}
				switch {
				case end && (inReport || match):
					ends++
					inReport, tail = false, loader.DefaultContextLines
				case tail > 0 && !match:
					tail--
				}
			}
			if healthy := strings.Contains(file, "healthy") || strings.Contains(file, "undetected"); checked == 0 && !healthy {
				t.Errorf("no line of a report checked: want a report")
			}
			if strings.Contains(file, "oops") && ends == 0 {
				t.Errorf("no end marker: want the Oops's")
			}
			t.Logf("%d lines of reports forwarded, %d end markers", checked, ends)
		})
	}
}

// TestRingCapacity fills a ring buffer of the default size (16 MiB) with
// a typical match, a 59-byte line, and counts the lines it holds: each
// record is sized to its line (its head, the line, the kernel's 8-byte
// header, rounded up to 8 bytes: 112 bytes), so 149,796 lines. At 1,072
// bytes whatever the line, as records once were, it held 15,650.
func TestRingCapacity(t *testing.T) {
	h := newHarness(t, loader.Config{NoContext: true, RingBufSize: loader.DefaultRingBufSize})
	head := int(unsafe.Offsetof(bpf.LastgaspRecord{}.Payload))
	slot := (head + len(panicLine) + 8 + 7) &^ 7
	want := loader.DefaultRingBufSize / slot
	if _, err := h.sc.Program().XDP().Run(&ebpf.RunOptions{Data: packettest.Line(panicLine).Frame(), Repeat: uint32(want + 1000)}); err != nil {
		t.Fatal(err)
	}
	d := h.delta()
	held := int(d.Matched - d.RingbufFull)
	t.Logf("a 16 MiB ring holds %d lines of %d bytes (%d-byte records)", held, len(panicLine), slot)
	if held != want || d.RingbufFull != 1000 {
		t.Errorf("the ring held %d lines (%d found it full), want %d", held, d.RingbufFull, want)
	}
}

// TestExtradataForwardedWhole: a record as a 6.9+ kernel sends it, with
// the target's userdata and sysdata lines after the text (" node=...",
// " msgid=..."), matches as the bare record does and is forwarded whole,
// byte for byte: the collector needs those lines (the node name, the
// release, the msgids that count lost lines).
func TestExtradataForwardedWhole(t *testing.T) {
	h := newHarness(t, loader.Config{NoContext: true})
	payload := "0,390,3330845,-,caller=C0;Kernel panic - not syncing: sysrq triggered crash\n" +
		" node=worker-7\n cpu=0\n taskname=sh\n release=6.17.0-lastgasp\n msgid=4242\n"
	_, lines := h.send(packettest.Line(payload).Frame())
	if len(lines) != 1 || lines[0].PatternID != patternID(t, "Kernel panic - not syncing") || string(lines[0].Payload) != payload {
		t.Fatalf("forwarded %+v, want the whole record as a panic", lines)
	}
}
