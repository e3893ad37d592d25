// Package netconsolesetup points this machine's netconsole at lastgasp's
// collectors: one dynamic netconsole target (configfs,
// /sys/kernel/config/netconsole/) per collector, in the extended format,
// sending from the interface and address of the route to the collector, to
// the MAC of the next hop on that route. A panicking kernel does no ARP or
// neighbour discovery, so the MAC is resolved now, through netlink, and
// written into the target.
//
// Configure is idempotent: a target that already says what it should is
// left alone, one whose collector route or port changed is rewritten
// (disabled, changed, enabled), and targets this package made (named with
// TargetPrefix) for collectors no longer named are removed. Targets made
// by anyone else are never touched.
package netconsolesetup

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Route is where netconsole must send to reach one collector: what the
// kernel's routing table and neighbour table say now.
type Route struct {
	// Device is the outgoing interface's name.
	Device string
	// Source is the local address the kernel would send from.
	Source netip.Addr
	// NextHop is the collector itself when it is on the link, else the
	// gateway.
	NextHop netip.Addr
	// NextHopMAC is NextHop's hardware address.
	NextHopMAC net.HardwareAddr
}

// neighbourTimeout bounds how long Resolve waits for an ARP or NDP answer.
const neighbourTimeout = 3 * time.Second

// usable are the neighbour states whose hardware address can be trusted
// enough to write into a target: answered lately, being checked, or
// configured by hand.
const usable = unix.NUD_REACHABLE | unix.NUD_STALE | unix.NUD_DELAY | unix.NUD_PROBE | unix.NUD_PERMANENT | unix.NUD_NOARP

// Resolve finds the route to collector and the hardware address of its
// next hop. When the neighbour table has no usable entry for the next hop,
// it sends it a UDP datagram (to the discard port, 9) so that the kernel
// resolves it, and waits for the answer, up to 3 s.
func Resolve(ctx context.Context, collector netip.Addr) (Route, error) {
	collector = collector.Unmap()
	routes, err := netlink.RouteGet(net.IP(collector.AsSlice()))
	if err != nil {
		return Route{}, fmt.Errorf("no route to collector %s: %w", collector, err)
	}
	if len(routes) == 0 {
		return Route{}, fmt.Errorf("no route to collector %s", collector)
	}
	r := routes[0]
	link, err := netlink.LinkByIndex(r.LinkIndex)
	if err != nil {
		return Route{}, fmt.Errorf("route to collector %s: interface %d: %w", collector, r.LinkIndex, err)
	}
	attrs := link.Attrs()
	if attrs.Flags&net.FlagLoopback != 0 {
		return Route{}, fmt.Errorf("collector %s is this machine's own address", collector)
	}
	if len(attrs.HardwareAddr) != 6 {
		return Route{}, fmt.Errorf("route to collector %s goes out %s, which is not an Ethernet interface", collector, attrs.Name)
	}
	src, ok := netip.AddrFromSlice(r.Src)
	if !ok {
		return Route{}, fmt.Errorf("route to collector %s through %s has no source address", collector, attrs.Name)
	}
	out := Route{Device: attrs.Name, Source: src.Unmap(), NextHop: collector}
	if gw, ok := netip.AddrFromSlice(r.Gw); ok && !gw.IsUnspecified() {
		out.NextHop = gw.Unmap()
	}
	mac, err := neighbour(ctx, attrs, out.NextHop)
	if err != nil {
		return Route{}, fmt.Errorf("collector %s: %w", collector, err)
	}
	out.NextHopMAC = mac
	return out, nil
}

// neighbour returns hop's hardware address on the interface, provoking
// ARP or NDP if the neighbour table lacks it.
func neighbour(ctx context.Context, link *netlink.LinkAttrs, hop netip.Addr) (net.HardwareAddr, error) {
	family := netlink.FAMILY_V4
	if hop.Is6() {
		family = netlink.FAMILY_V6
	}
	ctx, cancel := context.WithTimeout(ctx, neighbourTimeout)
	defer cancel()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var lastProbe time.Time
	for {
		neighs, err := netlink.NeighList(link.Index, family)
		if err != nil {
			return nil, fmt.Errorf("neighbour table of %s: %w", link.Name, err)
		}
		for _, n := range neighs {
			a, ok := netip.AddrFromSlice(n.IP)
			if ok && a.Unmap() == hop && n.State&usable != 0 && len(n.HardwareAddr) == 6 {
				return n.HardwareAddr, nil
			}
		}
		// A datagram makes the kernel resolve the address (again every
		// second, in case the first request was lost).
		if time.Since(lastProbe) >= time.Second {
			lastProbe = time.Now()
			if err := provoke(link.Name, hop); err != nil {
				return nil, fmt.Errorf("resolve next hop %s on %s: %w", hop, link.Name, err)
			}
		}
		select {
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return nil, fmt.Errorf("next hop %s on %s does not answer ARP/NDP (no MAC after %v)", hop, link.Name, neighbourTimeout)
			}
			return nil, ctx.Err()
		case <-tick.C:
		}
	}
}

// provoke sends an empty UDP datagram to hop's discard port through dev.
func provoke(dev string, hop netip.Addr) error {
	addr := &net.UDPAddr{IP: net.IP(hop.AsSlice()), Port: 9}
	if hop.Is6() && hop.IsLinkLocalUnicast() {
		addr.Zone = dev
	}
	c, err := net.DialUDP("udp", nil, addr)
	if err != nil {
		return err
	}
	defer c.Close()
	// The datagram itself may be refused (ICMP) or wait for resolution:
	// only the resolution matters.
	_, _ = c.Write(nil)
	return nil
}
