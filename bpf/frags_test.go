package bpf_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strings"
	"testing"

	"github.com/lastgasp/lastgasp/internal/filter"
	"github.com/lastgasp/lastgasp/internal/pattern"
	"github.com/lastgasp/lastgasp/internal/testrig/packettest"
	"github.com/lastgasp/lastgasp/loader"
)

// fragFrame returns an Ethernet frame (vlans 802.1Q tags) carrying payload
// over IPv6 and UDP, with two destination-options headers of ext bytes
// together (a multiple of 8, 16..4096) before the UDP header, so that the
// payload starts 62 + 4*vlans + ext bytes into the frame.
func fragFrame(vlans, ext int, payload []byte) []byte {
	var f []byte
	f = append(f, make([]byte, 12)...) // MAC addresses
	for range vlans {
		f = append(f, 0x81, 0x00, 0, 42)
	}
	f = append(f, 0x86, 0xdd)
	ip := make([]byte, 40)
	ip[0] = 0x60
	binary.BigEndian.PutUint16(ip[4:], uint16(ext+8+len(payload)))
	ip[6] = packettest.ProtoDstOpts
	ip[7] = 64
	s, d := packettest.NodeV6.As16(), packettest.CollectorV6.As16()
	copy(ip[8:], s[:])
	copy(ip[24:], d[:])
	f = append(f, ip...)
	first := min(ext-8, 2048)
	for i, n := range []int{first, ext - first} {
		e := make([]byte, n)
		e[0] = packettest.ProtoDstOpts
		if i == 1 {
			e[0] = packettest.ProtoUDP
		}
		e[1] = byte(n/8 - 1)
		if n > 2 {
			e[2] = 1 // PadN
			e[3] = byte(min(n-4, 255))
		}
		f = append(f, e...)
	}
	udp := make([]byte, 8)
	binary.BigEndian.PutUint16(udp[0:], packettest.NodePort)
	binary.BigEndian.PutUint16(udp[2:], packettest.NetconsolePort)
	binary.BigEndian.PutUint16(udp[4:], uint16(8+len(payload)))
	f = append(f, udp...)
	return append(f, payload...)
}

// TestMultiBufferPayloadEdge runs lines whose payload starts on each side
// of the end of the frame's first buffer (BPF_PROG_TEST_RUN puts what does
// not fit one page, less head- and tailroom, in fragments): the first 32
// payload bytes wholly, partly or not at all in the first buffer, so that
// the program reads them in place (quick_ordinary) or copies them across
// fragments (bpf_xdp_load_bytes). Each must be judged as package pattern
// judges the payload: the same pattern, verdict and long_header count.
func TestMultiBufferPayloadEdge(t *testing.T) {
	h := newHarness(t, loader.Config{NoContext: true})
	table := pattern.Default()
	payloads := []string{
		"[    3.053091] Kernel panic - not syncing: Fatal exception\n",
		"[    3.053091] ordinary line\n",
		"[    3.053091][    T1] Kernel panic - not syncing: x\n",
		"[    3.053091][    T1] ordinary\n",
		"4,1,1,-;Kernel panic - not syncing\n",
		"4,1,1,-;ordinary line of some length\n",
		"4,1,1,-;---[ end trace 0000000000000000 ]---\n",
		"6.1.0-56-amd64,4,1,1,-;Kernel panic - not syncing\n",
		"[1] ordinary",
		"[1] Oops: ",
		"4,1;Oops: ",
		"4,1;x",
		"Oops: 0002",
		strings.Repeat("1", 200),
		strings.Repeat("1", 159) + ";Oops: \n",
		strings.Repeat("1", 160) + ";Oops: \n",
	}
	judged := 0 // the furthest payload offset judged
	for vlans := 0; vlans <= 1; vlans++ {
	sweep:
		for ext := 3296; ext <= 3560; ext += 8 {
			at := 62 + 4*vlans + ext
			for _, p := range payloads {
				frame := fragFrame(vlans, ext, []byte(p))
				h.delta()
				verdict, lines := h.send(frame)
				d := h.delta()
				name := fmt.Sprintf("payload at %d, %q", at, p)
				if d.Malformed == 1 && at > 3400 {
					break sweep // the UDP header itself crosses into a fragment
				}
				judged = max(judged, at)
				want, ok := table.Match([]byte(p))
				wantVerdict, wantLong := uint32(xdpDrop), uint64(0)
				if !ok && pattern.LongHeader([]byte(p)) {
					wantVerdict, wantLong = xdpPass, 1
				}
				if d.Netconsole != 1 {
					t.Fatalf("%s: not judged as netconsole (counters %+v)", name, d)
				}
				got := uint32(0)
				if len(lines) == 1 {
					got = lines[0].PatternID
					if !bytes.Equal(lines[0].Payload, []byte(p)[:min(len(p), filter.MaxPayload)]) {
						t.Errorf("%s: forwarded %q", name, lines[0].Payload)
					}
				}
				if len(lines) > 1 || got != want.ID || verdict != wantVerdict || uint64(d.LongHeader) != wantLong {
					t.Errorf("%s: kernel pattern %d (%d lines), verdict %d, long_header %d; Go pattern %d, verdict %d, long_header %d",
						name, got, len(lines), verdict, d.LongHeader, want.ID, wantVerdict, wantLong)
				}
			}
		}
	}
	// BPF_PROG_TEST_RUN's first buffer is a page less 256 bytes of
	// headroom and 320 of tailroom on x86-64: 3520 bytes.
	if judged < 3490 {
		t.Errorf("the furthest payload judged starts at %d: no line had fewer than 32 payload bytes in the first buffer", judged)
	}
	t.Logf("payloads judged up to offset %d", judged)
}

// singleByteTable returns a table of one-byte patterns: the bytes a
// header is made of and a few a text may start with, each a match of its
// own, so that a text start found at the wrong offset shows as another
// pattern (the default table has no pattern starting with '[', a digit or
// a space: most wrong starts are ordinary lines as well).
func singleByteTable(tb testing.TB) *pattern.Table {
	tb.Helper()
	var ps []pattern.Pattern
	for i, c := range "[]; 14KO-x" {
		ps = append(ps, pattern.Pattern{ID: uint32(i + 1), Prefix: string(c), Kind: "test"})
	}
	t, err := pattern.NewTable(ps)
	if err != nil {
		tb.Fatal(err)
	}
	return t
}

// TestShortPayloadTrailer runs payloads cut at every length up to 48
// bytes, each followed in the frame by the rest of its line as trailing
// bytes past the UDP and IP lengths (what Ethernet padding may hold): the
// program reads the payload's first 32 bytes in place when the frame has
// them (quick_ordinary), and must judge only the payload, as package
// pattern does, never the trailer. Besides the default table, one of
// single bytes, so that every text start is a match of its own and a
// text found at the wrong offset (or ordinary where it is not) shows.
func TestShortPayloadTrailer(t *testing.T) {
	for _, table := range []*pattern.Table{pattern.Default(), singleByteTable(t)} {
		h := newHarness(t, loader.Config{NoContext: true})
		if err := h.sc.Program().SetPatterns(table); err != nil {
			t.Fatalf("set patterns: %v", err)
		}
		for _, line := range []string{
			"[    3.053091] Kernel panic - not syncing: Fatal exception\n",
			"[  3.0][    T1] Oops: 0002 [#1] SMP\n",
			"[  3.0][T1] x\n",
			"4,1,1,-;Kernel panic - not syncing\n",
			"4,1,1 ;Oops: x\n",
			"[1] ---[ end trace 0000000000000000 ]---\n",
			"11111111111111111111111111111111;Oops: \n",
			"1111111111111111111111111111111 ;Oops: \n",
		} {
			for cut := 0; cut <= min(48, len(line)); cut++ {
				p := []byte(line[:cut])
				frame := append(packettest.Line(string(p)).Frame(), line[cut:]...)
				h.delta()
				verdict, lines := h.send(frame)
				d := h.delta()
				want, ok := table.Match(p)
				got := uint32(0)
				if len(lines) == 1 {
					got = lines[0].PatternID
				}
				wantVerdict := uint32(xdpDrop)
				if !ok && pattern.LongHeader(p) {
					wantVerdict = xdpPass
				}
				if len(lines) > 1 || got != want.ID || verdict != wantVerdict || d.Netconsole != 1 {
					t.Errorf("payload %q, trailer %q: kernel pattern %d (%d lines), verdict %d, counters %+v; Go pattern %d, verdict %d",
						p, line[cut:], got, len(lines), verdict, d, want.ID, wantVerdict)
				}
			}
		}
	}
}

// FuzzKernelTrailerMatchesGo holds the program's judgement of a payload
// against package pattern's when trailing bytes follow it in the frame
// (past the UDP and IP lengths): the payload's first 32 bytes are read
// in place when the frame has them, and the trailer must never count.
// The table is of single bytes (every text start a match of its own), so
// that a text start found wrong shows.
func FuzzKernelTrailerMatchesGo(f *testing.F) {
	for _, s := range wordEdgeSeeds() {
		f.Add(s[:len(s)/2], s[len(s)/2:])
	}
	table := singleByteTable(f)
	h := newHarness(f, loader.Config{NoContext: true})
	if err := h.sc.Program().SetPatterns(table); err != nil {
		f.Fatalf("set patterns: %v", err)
	}
	f.Fuzz(func(t *testing.T, payload, trailer []byte) {
		payload = payload[:min(len(payload), 200)]
		trailer = trailer[:min(len(trailer), 64)]
		h.t = t
		h.delta()
		verdict, lines := h.send(append(packettest.Line(string(payload)).Frame(), trailer...))
		d := h.delta()
		want, ok := table.Match(payload)
		got := uint32(0)
		if len(lines) == 1 {
			got = lines[0].PatternID
		}
		wantVerdict, wantLong := uint32(xdpDrop), uint64(0)
		if !ok && pattern.LongHeader(payload) {
			wantVerdict, wantLong = xdpPass, 1
		}
		if len(lines) > 1 || got != want.ID || verdict != wantVerdict || uint64(d.LongHeader) != wantLong {
			t.Fatalf("payload %q, trailer %q: kernel pattern %d (%d lines), verdict %d, long_header %d; Go pattern %d, verdict %d",
				payload, trailer, got, len(lines), verdict, d.LongHeader, want.ID, wantVerdict)
		}
	})
}
