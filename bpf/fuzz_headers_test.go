package bpf_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/lastgasp/lastgasp/internal/filter"
	"github.com/lastgasp/lastgasp/internal/pattern"
	"github.com/lastgasp/lastgasp/internal/testrig/packettest"
	"github.com/lastgasp/lastgasp/loader"
)

// maxFuzzFrame keeps fuzzed frames within what BPF_PROG_TEST_RUN takes in
// one buffer.
const maxFuzzFrame = 1514

// What parseFrame finds, as the program's parsers do (enum parse_result).
const (
	frameOther     = iota // not a UDP datagram: passed, nothing counted
	frameMalformed        // passed, counted in malformed
	frameFragment         // passed, counted in fragments
	frameUDP              // a UDP datagram: judged if to a netconsole port
)

// parsedFrame is parseFrame's answer.
type parsedFrame struct {
	kind         int
	src, dst     netip.Addr
	sport, dport uint16
	payload      []byte
}

// parseFrame is the Go twin of the program's header parsers (parse_ethhdr,
// parse_iphdr, parse_ip6hdr and parse_udphdr in bpf/parsing.h), written
// from their comments, check for check and in the same order: the headers
// must lie in the frame, the lengths they declare must not reach past it,
// and the UDP payload is what the UDP length says (Ethernet padding after
// it is not payload).
func parseFrame(f []byte) parsedFrame {
	be16 := func(i int) int { return int(binary.BigEndian.Uint16(f[i:])) }
	bad := parsedFrame{kind: frameMalformed}
	if len(f) < 14 {
		return bad
	}
	proto, pos := be16(12), 14
	for range 2 { // VLAN_MAX_DEPTH
		if proto != 0x8100 && proto != 0x88a8 {
			break
		}
		if pos+4 > len(f) {
			return bad
		}
		proto, pos = be16(pos+2), pos+4
	}
	var p parsedFrame
	var l3end int
	var next byte
	switch proto {
	case 0x0800:
		if pos+20 > len(f) || f[pos]>>4 != 4 || f[pos]&0xf < 5 {
			return bad
		}
		hdr := int(f[pos]&0xf) * 4
		if pos+hdr > len(f) {
			return bad
		}
		tot := be16(pos + 2)
		if tot < hdr || pos+tot > len(f) {
			return bad
		}
		p.src = netip.AddrFrom4([4]byte(f[pos+12 : pos+16]))
		p.dst = netip.AddrFrom4([4]byte(f[pos+16 : pos+20]))
		l3end = pos + tot
		if be16(pos+6)&0x3fff != 0 { // MF, or an offset
			return parsedFrame{kind: frameFragment}
		}
		next, pos = f[pos+9], pos+hdr
	case 0x86dd:
		if pos+40 > len(f) || f[pos]>>4 != 6 {
			return bad
		}
		pl := be16(pos + 4)
		if pl == 0 || pos+40+pl > len(f) {
			return bad
		}
		p.src = netip.AddrFrom16([16]byte(f[pos+8 : pos+24]))
		p.dst = netip.AddrFrom16([16]byte(f[pos+24 : pos+40]))
		l3end = pos + 40 + pl
		next, pos = f[pos+6], pos+40
		isExt := func(h byte) bool {
			return h == packettest.ProtoHopOpts || h == packettest.ProtoRouting ||
				h == packettest.ProtoDstOpts || h == packettest.ProtoAH || h == packettest.ProtoFragment
		}
		for range 8 { // IPV6_EXT_MAX
			if !isExt(next) {
				break
			}
			if next == packettest.ProtoFragment {
				return parsedFrame{kind: frameFragment}
			}
			if pos+2 > len(f) {
				return bad
			}
			n := (int(f[pos+1]) + 1) * 8
			if next == packettest.ProtoAH {
				n = (int(f[pos+1]) + 2) * 4
			}
			next, pos = f[pos], pos+n
		}
		if next != packettest.ProtoUDP && isExt(next) {
			return bad // a chain longer than IPV6_EXT_MAX
		}
	default:
		return parsedFrame{kind: frameOther}
	}
	if next != packettest.ProtoUDP {
		return parsedFrame{kind: frameOther}
	}
	if pos+8 > len(f) {
		return bad
	}
	ulen := be16(pos + 4)
	if ulen < 8 || pos+ulen > l3end {
		return bad
	}
	p.kind = frameUDP
	p.sport, p.dport = uint16(be16(pos)), uint16(be16(pos+2))
	p.payload = f[pos+8 : pos+ulen]
	return p
}

// headerSeeds are frames of every shape the parsers tell apart: the real
// captures' frames, and each case of TestPacketMatrix's kind, whole and
// cut.
func headerSeeds(f *testing.F) [][]byte {
	f.Helper()
	var seeds [][]byte
	for i, frame := range captureFrames(f) {
		if i%50 == 0 { // a few: they differ in payload only
			seeds = append(seeds, frame)
		}
	}
	v6 := packettest.NodeV6
	for _, u := range []packettest.UDP{
		packettest.Line(panicLine),
		{IPv4Options: bytes.Repeat([]byte{1}, 40), Payload: []byte(panicLine)},
		{Src: v6, Payload: []byte(panicLine)},
		{Src: v6, IPv6Ext: []uint8{packettest.ProtoHopOpts, packettest.ProtoRouting, packettest.ProtoAH, packettest.ProtoDstOpts}, Payload: []byte(panicLine)},
		{Src: v6, IPv6Ext: bytes.Repeat([]byte{packettest.ProtoDstOpts}, 9), Payload: []byte(panicLine)},
		{Src: v6, IPv6Ext: []uint8{packettest.ProtoFragment}, Payload: []byte(panicLine)},
		{VLANs: []uint16{42}, Payload: []byte(panicLine)},
		{Src: v6, VLANs: []uint16{42, 7}, Payload: []byte(panicLine)},
		{VLANs: []uint16{1, 2, 3}, Payload: []byte(panicLine)},
		{DstPort: 6667, Payload: []byte(panicLine)},
		{Protocol: packettest.ProtoTCP, Payload: []byte(panicLine)},
		{IPv4MoreFragments: true, Payload: []byte(panicLine)},
		{IPv4FragOffset: 185, Payload: []byte(panicLine)},
		{Payload: []byte("4,1,1,-;Oops: 0002 [#1] SMP\n")},
		{Payload: []byte("6.1.0-56-amd64,4,1,1,-;Kernel panic - not syncing\n")},
		{Payload: nil},
	} {
		frame := u.Frame()
		seeds = append(seeds, frame, frame[:len(frame)-len(u.Payload)/2], append(bytes.Clone(frame), make([]byte, 30)...))
	}
	return seeds
}

// FuzzKernelHeadersMatchGo holds the program's header parsing against
// parseFrame on arbitrary frames (a fuzzed VLAN tag, IP version, header
// length, total or payload length, fragment field, extension header chain,
// UDP length or port, and frames cut anywhere): the same verdict, the same
// counters (malformed, fragments, netconsole, matched, long_header), and
// for a matching line the same payload and source.
func FuzzKernelHeadersMatchGo(f *testing.F) {
	for _, s := range headerSeeds(f) {
		f.Add(s)
	}
	h := newHarness(f, loader.Config{NoContext: true})
	table := pattern.Default()
	f.Fuzz(func(t *testing.T, frame []byte) {
		if len(frame) < 14 || len(frame) > maxFuzzFrame {
			return // BPF_PROG_TEST_RUN takes no shorter frame; longer is a fragment's business
		}
		h.t = t
		h.delta()
		verdict, lines := h.send(frame)
		d := h.delta()

		p := parseFrame(frame)
		var want loader.Counters
		want.Packets = 1
		wantVerdict := uint32(xdpPass)
		var wantLine *pattern.Pattern
		switch p.kind {
		case frameMalformed:
			want.Malformed = 1
		case frameFragment:
			want.Fragments = 1
		case frameUDP:
			if p.dport != packettest.NetconsolePort {
				break
			}
			want.Netconsole = 1
			if m, ok := table.Match(p.payload); ok {
				want.Matched = 1
				wantLine = &m
				wantVerdict = xdpDrop
			} else if pattern.LongHeader(p.payload) {
				want.LongHeader = 1
			} else {
				wantVerdict = xdpDrop
			}
		}
		if wantVerdict == xdpDrop {
			want.Dropped = 1
		} else {
			want.Passed = 1
		}
		got := loader.Counters{Packets: d.Packets, Passed: d.Passed, Dropped: d.Dropped, Malformed: d.Malformed,
			Fragments: d.Fragments, Netconsole: d.Netconsole, Matched: d.Matched, LongHeader: d.LongHeader, NotLocal: d.NotLocal}
		if verdict != wantVerdict || got != want {
			t.Fatalf("frame %x: kernel verdict %d, counters %+v; Go (kind %d) verdict %d, counters %+v", frame, verdict, got, p.kind, wantVerdict, want)
		}
		switch {
		case wantLine == nil && len(lines) != 0:
			t.Fatalf("frame %x: kernel forwarded %+v, Go nothing", frame, lines[0])
		case wantLine == nil:
		case len(lines) != 1:
			t.Fatalf("frame %x: kernel forwarded %d lines, Go a match of %q", frame, len(lines), wantLine.Prefix)
		case lines[0].PatternID != wantLine.ID ||
			!bytes.Equal(lines[0].Payload, p.payload[:min(len(p.payload), filter.MaxPayload)]) ||
			lines[0].Source != netip.AddrPortFrom(p.src.Unmap(), p.sport):
			t.Fatalf("frame %x: kernel forwarded pattern %d %q from %v; Go pattern %d %q from %v", frame,
				lines[0].PatternID, lines[0].Payload, lines[0].Source, wantLine.ID, p.payload, netip.AddrPortFrom(p.src, p.sport))
		}
	})
}

// addressedHere is the Go twin of addressed_here in bpf/lastgasp.c: dst
// is one of locals, an IPv6 multicast address, an IPv4 multicast address
// or the IPv4 limited broadcast.
func addressedHere(dst netip.Addr, locals []netip.Addr) bool {
	dst = dst.Unmap()
	if dst.IsMulticast() || dst == netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
		return true
	}
	for _, a := range locals {
		if a.Unmap() == dst {
			return true
		}
	}
	return false
}

// FuzzKernelPortsMatchGo varies the port table and the local address
// table (set at run time with SetPorts and SetLocalAddresses, as a config
// reload does, so each input replaces the previous input's tables), and a
// panic line's destination port and address, with the program loaded
// with and without LocalOnly. A datagram is judged (and the panic line
// forwarded) only if its port is in the table and, with LocalOnly, its
// address is this host's (or broadcast or multicast); else it is passed,
// counted in not_local if only the address was wrong.
//
// ports is read two bytes a port (up to PORTS_MAX; port 0, which SetPorts
// refuses, left out; none: 6666), locals four bytes an IPv4 address (up to
// 16), dst as the datagram's destination (its first 16 bytes an IPv6
// address if there are 16, else its first 4, zero-padded, an IPv4 one).
func FuzzKernelPortsMatchGo(f *testing.F) {
	f.Add([]byte{0x1a, 0x0a}, []byte{10, 99, 0, 1}, uint16(6666), []byte{10, 99, 0, 1}, true)
	f.Add([]byte{0x1a, 0x0a}, []byte{10, 99, 0, 1}, uint16(6666), []byte{10, 99, 0, 7}, true)
	f.Add([]byte{0x1a, 0x0a}, []byte{10, 99, 0, 1}, uint16(6666), []byte{10, 99, 0, 7}, false)
	f.Add([]byte{0x1a, 0x0a, 0x02, 0x02, 0xff, 0xff}, []byte{10, 99, 0, 1, 10, 99, 0, 255}, uint16(514), []byte{10, 99, 0, 255}, true)
	f.Add([]byte{0x1a, 0x0a}, []byte{}, uint16(6666), []byte{255, 255, 255, 255}, true)
	f.Add([]byte{0x1a, 0x0a}, []byte{}, uint16(6666), []byte{239, 1, 2, 3}, true)
	f.Add([]byte{0x1a, 0x0a}, []byte{}, uint16(6666), append([]byte{0xff, 0x02}, make([]byte, 14)...), true)
	f.Add([]byte{0x1a, 0x0a}, []byte{10, 99, 0, 1}, uint16(6666), netip.MustParseAddr("fd00:99::1").AsSlice(), true)
	f.Add([]byte{0x1a, 0x0b}, []byte{10, 99, 0, 1}, uint16(6666), []byte{10, 99, 0, 1}, true)
	f.Add([]byte{0, 0, 0x1a, 0x0a}, []byte{0, 0, 0, 0}, uint16(0), []byte{0, 0, 0, 0}, true)

	local := newHarness(f, loader.Config{NoContext: true, LocalOnly: true})
	all := newHarness(f, loader.Config{NoContext: true})
	panicPattern, _ := pattern.Default().Match([]byte(panicLine))
	panicID := panicPattern.ID
	f.Fuzz(func(t *testing.T, portSpec, localSpec []byte, dport uint16, dstSpec []byte, localOnly bool) {
		var ports []uint16
		for i := 0; i+1 < len(portSpec) && len(ports) < 64; i += 2 {
			if p := binary.BigEndian.Uint16(portSpec[i:]); p != 0 {
				ports = append(ports, p)
			}
		}
		if len(ports) == 0 {
			ports = []uint16{packettest.NetconsolePort}
		}
		var locals []netip.Addr
		for i := 0; i+3 < len(localSpec) && len(locals) < 16; i += 4 {
			locals = append(locals, netip.AddrFrom4([4]byte(localSpec[i:i+4])))
		}
		var dst netip.Addr
		if len(dstSpec) >= 16 {
			dst = netip.AddrFrom16([16]byte(dstSpec[:16]))
			if dst.Is4In6() {
				dst = dst.Unmap()
			}
		} else {
			var a [4]byte
			copy(a[:], dstSpec)
			dst = netip.AddrFrom4(a)
		}
		if dport == 0 {
			dport = 1 // packettest's zero means its default port
		}
		src := packettest.NodeV4
		if dst.Is6() {
			src = packettest.NodeV6
		}

		h := all
		if localOnly {
			h = local
		}
		h.t = t
		if err := h.sc.Program().SetPorts(ports); err != nil {
			t.Fatalf("set ports %v: %v", ports, err)
		}
		if err := h.sc.Program().SetLocalAddresses(locals); err != nil {
			t.Fatalf("set local addresses %v: %v", locals, err)
		}
		h.delta()
		verdict, lines := h.send(packettest.UDP{Src: src, Dst: dst, DstPort: dport, Payload: []byte(panicLine)}.Frame())
		d := h.delta()
		notLocal := d.NotLocal

		portOK := false
		for _, p := range ports {
			portOK = portOK || p == dport
		}
		judged := portOK && (!localOnly || addressedHere(dst, locals))
		desc := fmt.Sprintf("ports %v, local %v (local only %v), datagram to [%v]:%d", ports, locals, localOnly, dst, dport)
		switch {
		case judged && (verdict != xdpDrop || len(lines) != 1 || lines[0].PatternID != panicID || d.Netconsole != 1 || notLocal != 0):
			t.Fatalf("%s: verdict %d, %d lines, netconsole %d, not_local %d: want the panic line judged, forwarded and dropped", desc, verdict, len(lines), d.Netconsole, notLocal)
		case !judged && (verdict != xdpPass || len(lines) != 0 || d.Netconsole != 0):
			t.Fatalf("%s: verdict %d, %d lines, netconsole %d: want it passed, not judged", desc, verdict, len(lines), d.Netconsole)
		case !judged && (notLocal == 1) != portOK:
			t.Fatalf("%s: not_local %d: want 1 only for a netconsole port to an address not this host's", desc, notLocal)
		}
	})
}

// FuzzKernelBurstEviction runs sequences of lines from up to 256 sources
// through a program that remembers the bursts of only 32 (BurstSources),
// so that its LRU evicts, against filter.Filter, which remembers them all.
// Each chunk of the input (split at '\n') is one datagram, its first byte
// choosing the source. The kernel's LRU is approximate (it evicts in
// batches, per CPU), so the kernel may forget a burst the Go filter still
// has, and nothing more:
//   - a match is forwarded by both, with the same pattern;
//   - a line the kernel forwards as context, Go does too (eviction never
//     invents a burst, nor revives an old one);
//   - the line right after a source's own match, with nothing in between
//     that could evict it, is judged alike.
func FuzzKernelBurstEviction(f *testing.F) {
	var many []byte
	for i := range 200 {
		many = append(many, byte(i), ' ')
		if i%3 == 0 {
			many = append(many, "Oops: 0002\n"...)
		} else {
			many = append(many, "RIP: 0010:x\n"...)
		}
	}
	f.Add(many)
	f.Add([]byte("\x00Kernel panic - not syncing\n\x00a\n\x01BUG: x\n\x02Oops: \n\x01b\n\x00c\n"))
	var spray []byte
	for i := range 120 {
		spray = append(spray, fmt.Sprintf("%cWARNING: CPU: 0\n", byte(i))...)
	}
	for i := range 120 {
		spray = append(spray, fmt.Sprintf("%cline\n", byte(i))...)
	}
	f.Add(spray)

	const contextLines, burstLines, sources = 3, 6, 32
	cfg := loader.Config{ContextLines: contextLines, BurstLines: burstLines, BurstSources: sources}
	if os.Geteuid() != 0 {
		f.Skip("loading BPF programs needs root")
	}
	h := newHarness(f, cfg)
	iteration := uint64(0)
	f.Fuzz(func(t *testing.T, data []byte) {
		// Sources of this input only (fd00:e:<iteration>::<byte>): the
		// bursts of earlier inputs are other sources, which the LRU
		// holds and evicts like any.
		iteration++
		h.t = t
		twin := filter.New(filter.Config{ContextLines: contextLines, BurstLines: burstLines})
		chunks := bytes.Split(data, []byte("\n"))
		if len(chunks) > 512 {
			chunks = chunks[:512]
		}
		var lastMatch netip.Addr // the source of the previous datagram, if it was a match
		for i, chunk := range chunks {
			var a [16]byte
			a[0], a[1], a[3] = 0xfd, 0x00, 0x0e
			binary.BigEndian.PutUint64(a[4:], iteration)
			if len(chunk) > 0 {
				a[15] = chunk[0]
			}
			src := netip.AddrFrom16(a)
			payload := chunk[:min(len(chunk), maxFuzzPayload)]
			_, lines := h.send(packettest.UDP{Src: src, Payload: payload}.Frame())
			want, ok := twin.Judge(netip.AddrPortFrom(src, packettest.NodePort), payload, time.Now())
			if len(lines) > 1 {
				t.Fatalf("datagram %d %q: kernel forwarded %d lines", i, payload, len(lines))
			}
			got, has := filter.Line{}, len(lines) == 1
			if has {
				got = lines[0]
			}
			switch {
			case ok && want.Flag == filter.Match && (!has || got.Flag != filter.Match || got.PatternID != want.PatternID):
				t.Fatalf("datagram %d %q from %v: Go a match of %d, kernel %+v (forwarded %v)", i, payload, src, want.PatternID, got, has)
			case has && got.Flag == filter.Match && !(ok && want.Flag == filter.Match):
				t.Fatalf("datagram %d %q from %v: kernel a match of %d, Go not", i, payload, src, got.PatternID)
			case has && got.Flag == filter.Context && !(ok && want.Flag == filter.Context):
				t.Fatalf("datagram %d %q from %v: kernel forwarded context, Go did not: a burst evicted and revived, or invented", i, payload, src)
			case src == lastMatch && ok != has:
				t.Fatalf("datagram %d %q from %v, right after its own match: Go forwarded %v, kernel %v", i, payload, src, ok, has)
			}
			lastMatch = netip.Addr{}
			if ok && want.Flag == filter.Match {
				lastMatch = src
			}
		}
	})
}
