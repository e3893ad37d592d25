package liveness

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"syscall"
)

// Neighbour-table states (NUD_*, include/uapi/linux/neighbour.h) that mean
// the address answered ARP or NDP lately, or is configured at a link
// address (PERMANENT: then a dead host never yields "no route to host",
// only silence). NOARP is left out: on a device without ARP (a tunnel) an
// ICMP unreachable can come from the far end, not the host.
const (
	nudReachable = 0x02
	nudStale     = 0x04
	nudDelay     = 0x08
	nudProbe     = 0x10
	nudPermanent = 0x80
	nudAnswered  = nudReachable | nudStale | nudDelay | nudProbe | nudPermanent
)

// ndaDst is the neighbour attribute holding the address (NDA_DST).
const ndaDst = 1

// ndmsgLen is sizeof(struct ndmsg): family, two pads, ifindex, state,
// flags, type.
const ndmsgLen = 12

// NeighbourAnswered reports whether the kernel's neighbour table (of the
// calling thread's network namespace) holds addr in a state that says it
// answered ARP or NDP lately. It is how a fast "no route to host" is read:
// after a failed ARP resolution the entry is FAILED, while an ICMP
// unreachable sent by the host itself (a firewall's reject) leaves it
// REACHABLE. An address not in the table (a routed one: the neighbour is
// its gateway) is not answered; one with entries on several devices is
// answered if any of them says so.
func NeighbourAnswered(addr netip.Addr) (bool, error) {
	addr = addr.Unmap().WithZone("")
	family := syscall.AF_INET
	if addr.Is6() {
		family = syscall.AF_INET6
	}
	rib, err := syscall.NetlinkRIB(syscall.RTM_GETNEIGH, family)
	if err != nil {
		return false, fmt.Errorf("neighbour table: %w", err)
	}
	msgs, err := syscall.ParseNetlinkMessage(rib)
	if err != nil {
		return false, fmt.Errorf("neighbour table: %w", err)
	}
	for _, m := range msgs {
		if m.Header.Type != syscall.RTM_NEWNEIGH || len(m.Data) < ndmsgLen {
			continue
		}
		state := binary.NativeEndian.Uint16(m.Data[8:10])
		for attrs := m.Data[ndmsgLen:]; len(attrs) >= 4; {
			n := int(binary.NativeEndian.Uint16(attrs[0:2]))
			if n < 4 || n > len(attrs) {
				break // malformed: stop reading this message
			}
			if binary.NativeEndian.Uint16(attrs[2:4]) == ndaDst {
				if ip, ok := netip.AddrFromSlice(attrs[4:n]); ok && ip == addr && state&nudAnswered != 0 {
					return true, nil
				}
			}
			attrs = attrs[min((n+3)&^3, len(attrs)):]
		}
	}
	return false, nil
}
