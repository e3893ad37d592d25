package trafficgen

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/lastgasp/lastgasp/internal/testrig/packettest"
)

// TestRotationProgramEdges runs the generator's program with an ordinary
// BPF_PROG_TEST_RUN (no live frames: the rewritten frame comes back, and
// repeats run on the same bytes, each on the last one's rewrite) at the
// edges of the rotation: k = 0, 0xffff, 0x10000 and MaxSources-1 with
// n = MaxSources, a wrap with n = 2, five repeats crossing MaxSources, and
// n = 1 and no metadata (the frame untouched). Each frame must come out
// from RotatedSource(base, k) with its checksums valid (the IPv4 header's;
// IPv6's UDP checksum) and its payload unchanged.
func TestRotationProgramEdges(t *testing.T) {
	r, err := NewRedirector(1)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	for _, base := range []netip.Addr{Source(0).Addr(), SourceV6(0).Addr(), netip.MustParseAddr("192.0.2.255"), netip.MustParseAddr("2001:db8::ffff:ffff:ffff")} {
		dst := netip.MustParseAddr("10.99.0.1")
		if base.Is6() {
			dst = netip.MustParseAddr("fd00:99::1")
		}
		frame := packettest.UDP{Src: base, Dst: dst, Payload: []byte("6,1,2,-;a line\n"), UDPChecksum: base.Is6()}.Frame()
		for _, c := range []struct {
			turn   uint64
			n      uint32 // 0: no metadata
			repeat uint32
			wantK  int // -1: the frame as built
		}{
			{0, MaxSources, 1, 0},
			{0xffff, MaxSources, 1, 0xffff},
			{0x10000, MaxSources, 1, 0x10000},
			{MaxSources - 1, MaxSources, 1, MaxSources - 1},
			{MaxSources - 3, MaxSources, 5, 1},
			{7, 2, 1, 1},
			{8, 2, 3, 0},
			{5, 1, 1, -1},
			{5, 0, 1, -1},
		} {
			if err := r.counters.Put(uint32(0), genCounters{Turn: c.turn}); err != nil {
				t.Fatal(err)
			}
			opts := &ebpf.RunOptions{Data: frame, DataOut: make([]byte, len(frame)+4), Repeat: c.repeat}
			meta := 0
			if c.n > 0 {
				opts.Data = append(binary.NativeEndian.AppendUint32(nil, c.n), frame...)
				opts.Context = xdpMD{Data: 4, DataEnd: uint32(len(opts.Data))}
				meta = 4
			}
			if _, err := r.prog.Run(opts); err != nil {
				t.Fatal(err)
			}
			out := opts.DataOut[meta:]
			want := base
			if c.wantK >= 0 {
				want = RotatedSource(base, c.wantK)
			}
			if got := sourceOf(out); got != want {
				t.Errorf("base %v, turn %d, n %d, %d repeats: source %v, want %v", base, c.turn, c.n, c.repeat, got, want)
			}
			if c.wantK < 0 && !bytes.Equal(out, frame) {
				t.Errorf("base %v, n %d: the frame changed", base, c.n)
			}
			if err := checksumsValid(out); err != "" {
				t.Errorf("base %v, turn %d, n %d, %d repeats: %s", base, c.turn, c.n, c.repeat, err)
			}
			if !bytes.Equal(packettest.UDPPayload(out), packettest.UDPPayload(frame)) {
				t.Errorf("base %v, turn %d: the payload changed", base, c.turn)
			}
		}
	}
}

// sourceOf returns the source address of an untagged IPv4 or IPv6 frame.
func sourceOf(frame []byte) netip.Addr {
	if binary.BigEndian.Uint16(frame[12:]) == packettest.EtherIPv4 {
		return netip.AddrFrom4([4]byte(frame[14+12:]))
	}
	return netip.AddrFrom16([16]byte(frame[14+8:]))
}

// checksumsValid returns what is wrong with the checksums a receiver
// checks in frame (IPv4: the header's, the UDP checksum 0; IPv6: the UDP
// checksum over the pseudo-header), or "".
func checksumsValid(frame []byte) string {
	if binary.BigEndian.Uint16(frame[12:]) == packettest.EtherIPv4 {
		if packettest.OnesSum(0, frame[14:14+20]) != 0xffff {
			return "IPv4 header checksum wrong"
		}
		if binary.BigEndian.Uint16(frame[14+20+6:]) != 0 {
			return "IPv4 UDP checksum not 0"
		}
		return ""
	}
	udp := frame[14+40:]
	src, dst := netip.AddrFrom16([16]byte(frame[14+8:])), netip.AddrFrom16([16]byte(frame[14+24:]))
	if packettest.OnesSum(packettest.PseudoHeaderSum(src, dst, packettest.ProtoUDP, len(udp)), udp) != 0xffff {
		return "IPv6 UDP checksum wrong"
	}
	return ""
}
