// Package packettest builds Ethernet frames for tests and benchmarks:
// netconsole datagrams over IPv4 or IPv6, with VLAN tags, IPv4 options,
// IPv6 extension headers or fragment fields, so that the XDP program can be
// run on every shape of packet it may meet. Lengths and the IPv4 header
// checksum are filled in; a test that wants a malformed packet builds a good
// one and breaks it.
package packettest

import (
	"encoding/binary"
	"net/netip"
)

// Addresses used by default: a node sending to a collector.
var (
	NodeV4      = netip.MustParseAddr("10.99.0.2")
	CollectorV4 = netip.MustParseAddr("10.99.0.1")
	NodeV6      = netip.MustParseAddr("fd00:99::2")
	CollectorV6 = netip.MustParseAddr("fd00:99::1")
)

// Ports used by default: netconsole's source and destination.
const (
	NodePort       = 6665
	NetconsolePort = 6666
)

// EtherTypes and IP protocol numbers used here.
const (
	EtherIPv4   = 0x0800
	EtherIPv6   = 0x86dd
	EtherARP    = 0x0806
	Ether8021Q  = 0x8100
	Ether8021AD = 0x88a8

	ProtoTCP      = 6
	ProtoUDP      = 17
	ProtoHopOpts  = 0
	ProtoRouting  = 43
	ProtoFragment = 44
	ProtoAH       = 51
	ProtoDstOpts  = 60
)

// UDP describes one UDP datagram in an Ethernet frame. Zero fields take
// the defaults: NodeV4:6665 to CollectorV4:6666.
type UDP struct {
	Src, Dst         netip.Addr // both IPv4 or both IPv6
	SrcPort, DstPort uint16
	// VLANs are 802.1Q tag IDs, outermost first; with two, the outer
	// tag is 802.1ad (QinQ).
	VLANs []uint16
	// IPv4Options are appended to the IPv4 header (padded to 4 bytes).
	IPv4Options []byte
	// IPv4FragOffset (in 8-byte units) and IPv4MoreFragments set the
	// IPv4 fragment fields.
	IPv4FragOffset    uint16
	IPv4MoreFragments bool
	// IPv6Ext lists IPv6 extension headers (ProtoHopOpts, ProtoRouting,
	// ProtoDstOpts, ProtoAH, ProtoFragment) between the fixed header and
	// UDP, each with an 8-byte body of zeros (AH: 16 bytes).
	IPv6Ext []uint8
	// Protocol overrides the IP protocol (default ProtoUDP); the UDP
	// header is still written, as the payload of that protocol.
	Protocol uint8
	// Payload is the UDP payload: the netconsole line.
	Payload []byte
	// UDPChecksum fills in the UDP checksum (over the pseudo-header of
	// RFC 768 or RFC 8200 section 8.1, the UDP header and the payload).
	// Without it the checksum is 0, "none": valid for IPv4, and enough
	// for the XDP program, which does not check it, but a network stack
	// drops UDP over IPv6 without a checksum, so a frame for a socket
	// receiver over IPv6 needs it.
	UDPChecksum bool
}

// Line returns a datagram carrying payload with every default.
func Line(payload string) UDP {
	return UDP{Payload: []byte(payload)}
}

func (u UDP) withDefaults() UDP {
	if !u.Src.IsValid() {
		u.Src = NodeV4
	}
	if !u.Dst.IsValid() {
		if u.Src.Is4() {
			u.Dst = CollectorV4
		} else {
			u.Dst = CollectorV6
		}
	}
	if u.SrcPort == 0 {
		u.SrcPort = NodePort
	}
	if u.DstPort == 0 {
		u.DstPort = NetconsolePort
	}
	if u.Protocol == 0 {
		u.Protocol = ProtoUDP
	}
	return u
}

// Frame returns the Ethernet frame.
func (u UDP) Frame() []byte {
	u = u.withDefaults()
	udp := make([]byte, 8+len(u.Payload))
	binary.BigEndian.PutUint16(udp[0:], u.SrcPort)
	binary.BigEndian.PutUint16(udp[2:], u.DstPort)
	binary.BigEndian.PutUint16(udp[4:], uint16(len(udp)))
	copy(udp[8:], u.Payload)
	if u.UDPChecksum {
		binary.BigEndian.PutUint16(udp[6:], udpChecksum(u.Src, u.Dst, u.Protocol, udp))
	}

	var ip []byte
	etherType := uint16(EtherIPv4)
	if u.Src.Is4() {
		ip = u.ipv4(udp)
	} else {
		etherType = EtherIPv6
		ip = u.ipv6(udp)
	}
	return append(Ethernet(etherType, u.VLANs), ip...)
}

// Ethernet returns an Ethernet header (broadcast destination, as
// netconsole's default) with the given VLAN tags and EtherType.
func Ethernet(etherType uint16, vlans []uint16) []byte {
	h := []byte{
		0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // destination
		0x52, 0x54, 0x00, 0x12, 0x34, 0x56, // source
	}
	for i, id := range vlans {
		tpid := uint16(Ether8021Q)
		if len(vlans) == 2 && i == 0 {
			tpid = Ether8021AD
		}
		h = binary.BigEndian.AppendUint16(h, tpid)
		h = binary.BigEndian.AppendUint16(h, id&0x0fff)
	}
	return binary.BigEndian.AppendUint16(h, etherType)
}

func (u UDP) ipv4(payload []byte) []byte {
	opts := append([]byte(nil), u.IPv4Options...)
	for len(opts)%4 != 0 {
		opts = append(opts, 0) // end of option list
	}
	hlen := 20 + len(opts)
	h := make([]byte, hlen, hlen+len(payload))
	h[0] = 0x40 | byte(hlen/4)
	binary.BigEndian.PutUint16(h[2:], uint16(hlen+len(payload)))
	binary.BigEndian.PutUint16(h[4:], 1) // identification
	frag := u.IPv4FragOffset & 0x1fff
	if u.IPv4MoreFragments {
		frag |= 0x2000
	}
	binary.BigEndian.PutUint16(h[6:], frag)
	h[8] = 64 // TTL
	h[9] = u.Protocol
	s, d := u.Src.As4(), u.Dst.As4()
	copy(h[12:], s[:])
	copy(h[16:], d[:])
	copy(h[20:], opts)
	binary.BigEndian.PutUint16(h[10:], ipv4Checksum(h))
	return append(h, payload...)
}

// OnesSum returns the one's complement sum (RFC 1071) of sum and b's
// 16-bit big-endian words, an odd last byte counted as the high byte of a
// word padded with 0, its carries folded back in. Feed the pieces of a
// checksummed range in order (a pseudo-header, then a datagram), each
// but the last of even length. Over a range whose checksum field holds
// its checksum the sum is 0xffff: that is how a receiver checks it.
func OnesSum(sum uint16, b []byte) uint16 {
	s := uint64(sum)
	for i := 0; i+1 < len(b); i += 2 {
		s += uint64(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		s += uint64(b[len(b)-1]) << 8
	}
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return uint16(s)
}

// PseudoHeaderSum returns the one's complement sum of the pseudo-header a
// UDP or TCP checksum covers: the source and destination addresses (both
// IPv4 or both IPv6), the protocol and the length of the datagram.
func PseudoHeaderSum(src, dst netip.Addr, proto uint8, length int) uint16 {
	sum := OnesSum(0, src.AsSlice())
	sum = OnesSum(sum, dst.AsSlice())
	return OnesSum(sum, []byte{0, proto, byte(length >> 8), byte(length)})
}

// ipv4Checksum returns the header checksum of IPv4 header h (its checksum
// field 0): the one's complement of the one's complement sum of its words.
func ipv4Checksum(h []byte) uint16 {
	return ^OnesSum(0, h)
}

// udpChecksum returns the UDP checksum of datagram udp (its checksum field
// 0) from src to dst: the one's complement of the one's complement sum of
// the pseudo-header (addresses, protocol, UDP length) and the datagram,
// 0xffff if that is 0 (0 means "no checksum").
func udpChecksum(src, dst netip.Addr, proto uint8, udp []byte) uint16 {
	if c := ^OnesSum(PseudoHeaderSum(src, dst, proto, len(udp)), udp); c != 0 {
		return c
	}
	return 0xffff
}

func (u UDP) ipv6(payload []byte) []byte {
	var ext []byte
	next := u.Protocol
	// Build the chain back to front: each header names the one after it.
	for i := len(u.IPv6Ext) - 1; i >= 0; i-- {
		var e []byte
		switch u.IPv6Ext[i] {
		case ProtoAH:
			e = make([]byte, 16)
			e[1] = 16/4 - 2 // AH length: 4-byte units, minus 2
		default:
			e = make([]byte, 8)
			e[1] = 0 // 8-byte units, minus 1
		}
		e[0] = next
		next = u.IPv6Ext[i]
		ext = append(e, ext...)
	}
	h := make([]byte, 40, 40+len(ext)+len(payload))
	h[0] = 0x60
	binary.BigEndian.PutUint16(h[4:], uint16(len(ext)+len(payload)))
	h[6] = next
	h[7] = 64 // hop limit
	s, d := u.Src.As16(), u.Dst.As16()
	copy(h[8:], s[:])
	copy(h[24:], d[:])
	h = append(h, ext...)
	return append(h, payload...)
}
