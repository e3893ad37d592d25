package testnet_test

import (
	"encoding/json"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/lastgasp/lastgasp/internal/testrig/testnet"
)

// TestNewPairQueues checks that NewPairQueues gives both veth ends the
// queues asked for and NewPair one, and that the pair's IPv4 subnet stays
// out of 10.128.0.0/9 (the traffic generator's sources).
func TestNewPairQueues(t *testing.T) {
	for _, want := range []int{1, 2} {
		pair := testnet.NewPair(t)
		if want > 1 {
			pair = testnet.NewPairQueues(t, want)
		}
		for _, e := range []testnet.End{pair.Node, pair.Collector} {
			out, err := e.Netns.IP("-json", "-details", "link", "show", "dev", e.Ifname)
			if err != nil {
				t.Fatal(err)
			}
			var links []struct {
				TX int `json:"num_tx_queues"`
				RX int `json:"num_rx_queues"`
			}
			if err := json.Unmarshal([]byte(out), &links); err != nil || len(links) != 1 {
				t.Fatalf("ip link show dev %s: %q: %v", e.Ifname, out, err)
			}
			if links[0].TX != want || links[0].RX != want {
				t.Errorf("%s: %d TX and %d RX queues, want %d each", e.Ifname, links[0].TX, links[0].RX, want)
			}
			if netip.MustParsePrefix("10.128.0.0/9").Contains(e.IPv4) {
				t.Errorf("%s: address %v inside the generator's sources, 10.128.0.0/9", e.Ifname, e.IPv4)
			}
		}
	}
}

// TestCountersSocketDrops overflows a dual-stack UDP socket's buffer in
// the collector's namespace, over IPv4 and then over IPv6, and checks that
// Counters sees each family's drops under its own name: UdpRcvbufErrors
// for IPv4, Udp6RcvbufErrors for IPv6 (not in /proc/net/snmp).
func TestCountersSocketDrops(t *testing.T) {
	pair := testnet.NewPair(t)
	var conn *net.UDPConn
	if err := pair.Collector.Netns.Do(func() (err error) {
		conn, err = net.ListenUDP("udp", &net.UDPAddr{Port: 6666})
		if err != nil {
			return err
		}
		return conn.SetReadBuffer(1) // the kernel's least: a few datagrams
	}); err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	counters := func() map[string]uint64 {
		t.Helper()
		c, err := pair.Collector.Netns.Counters()
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	const sent = 100
	for _, f := range []struct {
		dst         netip.Addr
		name, other string
	}{
		{pair.Collector.IPv4, "UdpRcvbufErrors", "Udp6RcvbufErrors"},
		{pair.Collector.IPv6, "Udp6RcvbufErrors", "UdpRcvbufErrors"},
	} {
		before := counters()
		if err := pair.Node.Netns.Do(func() error {
			c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(f.dst, 6666)))
			if err != nil {
				return err
			}
			defer c.Close()
			for range sent {
				if _, err := c.Write(make([]byte, 500)); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		// The datagrams are received in softirq; give it a moment.
		var after map[string]uint64
		for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			after = counters()
			if after[f.name]-before[f.name] > 0 || time.Now().After(deadline) {
				break
			}
		}
		drops, other := after[f.name]-before[f.name], after[f.other]-before[f.other]
		t.Logf("to %v: %d of %d datagrams dropped (%s), %s %d", f.dst, drops, sent, f.name, f.other, other)
		if drops == 0 || drops > sent || other != 0 {
			t.Errorf("to %v: %s went up by %d and %s by %d, want 1 to %d and 0", f.dst, f.name, drops, f.other, other, sent)
		}
		// Empty the socket for the next family.
		for conn.SetReadDeadline(time.Now().Add(50 * time.Millisecond)); ; {
			if _, _, err := conn.ReadFromUDP(make([]byte, 2048)); err != nil {
				break
			}
		}
	}
}
