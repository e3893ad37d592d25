package packettest

import (
	"encoding/binary"
	"net/netip"
	"testing"
)

// TestOnesSum checks the Internet checksum against a worked IPv4 header
// (the checksum 0xb861 of a header from 192.168.0.1 to 192.168.0.199),
// the receiver's check over the filled-in header (a sum of 0xffff), and
// an odd-length range, whose last byte is the high byte of a padded word.
func TestOnesSum(t *testing.T) {
	h := []byte{
		0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11,
		0x00, 0x00, 0xc0, 0xa8, 0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
	}
	if got := ipv4Checksum(h); got != 0xb861 {
		t.Errorf("ipv4Checksum = %#04x, want 0xb861", got)
	}
	binary.BigEndian.PutUint16(h[10:], 0xb861)
	if got := OnesSum(0, h); got != 0xffff {
		t.Errorf("OnesSum over the filled-in header = %#04x, want 0xffff", got)
	}
	if got, want := OnesSum(0, []byte{0x12, 0x34, 0x56}), OnesSum(0, []byte{0x12, 0x34, 0x56, 0x00}); got != want || got != 0x6834 {
		t.Errorf("OnesSum of an odd range = %#04x, want %#04x (0x6834)", got, want)
	}
}

// TestUDPChecksumChecks builds IPv4 and IPv6 frames with their UDP
// checksum filled in and checks each the way a receiver does: the sum of
// the pseudo-header and the datagram is 0xffff.
func TestUDPChecksumChecks(t *testing.T) {
	for _, c := range []struct{ src, dst netip.Addr }{{NodeV4, CollectorV4}, {NodeV6, CollectorV6}} {
		frame := UDP{Src: c.src, Dst: c.dst, Payload: []byte("6,1,2,-;a line\n"), UDPChecksum: true}.Frame()
		ipLen := 20
		if c.src.Is6() {
			ipLen = 40
		}
		udp := frame[14+ipLen:]
		if binary.BigEndian.Uint16(udp[6:]) == 0 {
			t.Fatalf("%v: UDP checksum not filled in", c.src)
		}
		if got := OnesSum(PseudoHeaderSum(c.src, c.dst, ProtoUDP, len(udp)), udp); got != 0xffff {
			t.Errorf("%v: the receiver's sum = %#04x, want 0xffff", c.src, got)
		}
	}
}
