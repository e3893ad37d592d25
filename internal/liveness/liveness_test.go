package liveness_test

import (
	"context"
	"net/netip"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/lastgasp/lastgasp/internal/liveness"
	"github.com/lastgasp/lastgasp/internal/testrig/testnet"
)

// rejectKubelet makes the node's firewall reject its kubelet port with an
// ICMP "administratively prohibited", as a live node's nftables can.
func rejectKubelet(t *testing.T, ns *testnet.Netns) {
	t.Helper()
	ns.Nft(t, `table inet lastgasp_test {
	chain input {
		type filter hook input priority 0; policy accept;
		meta nfproto ipv4 tcp dport 10250 reject with icmp type host-prohibited
	}
}
`)
}

// TestFirewalledNodeIsAlive: a live node whose firewall rejects the
// kubelet port with an ICMP unreachable ("no route to host", at once) is
// alive; an address nobody holds (ARP unanswered, also "no route to
// host", after seconds) is dead. (IPv4: ICMPv6's "administratively
// prohibited" is TestAdminProhibitedIsUndecided.)
func TestFirewalledNodeIsAlive(t *testing.T) {
	testnet.RequireRoot(t)
	pair := testnet.NewPair(t)
	rejectKubelet(t, pair.Node.Netns)
	p := &liveness.Prober{
		Window: 1500 * time.Millisecond, Attempt: 500 * time.Millisecond,
		Do: pair.Collector.Netns.Do, // probe from the collector's namespace
	}
	for _, c := range []struct {
		addr netip.Addr
		dead bool
	}{
		{pair.Node.IPv4, false},
		{pair.Node.IPv4.Next(), true}, // nobody's
	} {
		node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n"}, Status: corev1.NodeStatus{
			Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: c.addr.String()}}}}
		v, err := p.Confirm(context.Background(), node, c.addr)
		if err != nil {
			t.Fatalf("%v: %v", c.addr, err)
		}
		if v.Dead != c.dead {
			t.Errorf("%v: dead %v, want %v: %s", c.addr, v.Dead, c.dead, v.Evidence)
		}
		t.Logf("%v: %s", c.addr, v.Evidence)
	}
}

// TestProvesNothing: a probe to a network the collector has no route to
// (ENETUNREACH, as for an address of a family it cannot reach) is
// undecided, never dead. (Nor does the collector's own nft drop give
// EPERM: TCP ignores the error of a SYN's send and retransmits, so the
// probe hears silence, as from a remote firewall: the Lease watch, not
// the probe, then decides.)
func TestProvesNothing(t *testing.T) {
	testnet.RequireRoot(t)
	pair := testnet.NewPair(t)
	p := &liveness.Prober{Window: time.Second, Attempt: 500 * time.Millisecond, Do: pair.Collector.Netns.Do}
	for _, addr := range []netip.Addr{
		netip.MustParseAddr("192.0.2.7"),   // no route: the namespace has none but its /24
		netip.MustParseAddr("2001:db8::7"), // nor for IPv6
	} {
		node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n"}, Status: corev1.NodeStatus{
			Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: addr.String()}}}}
		v, err := p.Confirm(context.Background(), node, addr)
		if err != nil {
			t.Fatalf("%v: %v", addr, err)
		}
		if v.Dead || !v.Undecided {
			t.Errorf("%v: dead %v, undecided %v, want undecided: %s", addr, v.Dead, v.Undecided, v.Evidence)
		}
		t.Logf("%v: %s", addr, v.Evidence)
	}
}

// TestAdminProhibitedIsUndecided: a node whose firewall rejects the
// kubelet port with an ICMPv6 "administratively prohibited" (Linux
// reports it to connect as EACCES) may be alive behind a policy: the probe
// is undecided, never dead. Each attempt outlasts the SYN's first
// retransmission (1 s): over a veth the first SYN's ICMP arrives while
// connect still holds the socket, and TCP drops it (TcpExtLockDroppedIcmps);
// on a real network it comes a round trip later and counts at once.
func TestAdminProhibitedIsUndecided(t *testing.T) {
	testnet.RequireRoot(t)
	pair := testnet.NewPair(t)
	pair.Node.Netns.Nft(t, `table inet lastgasp_test {
	chain input {
		type filter hook input priority 0; policy accept;
		meta nfproto ipv6 tcp dport 10250 reject with icmpv6 type admin-prohibited
	}
}
`)
	p := &liveness.Prober{Window: 3 * time.Second, Attempt: 1500 * time.Millisecond, Do: pair.Collector.Netns.Do}
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n"}, Status: corev1.NodeStatus{
		Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: pair.Node.IPv6.String()}}}}
	v, err := p.Confirm(context.Background(), node, pair.Node.IPv6)
	if err != nil {
		t.Fatal(err)
	}
	if v.Dead || !v.Undecided {
		t.Errorf("dead %v, undecided %v, want undecided: %s", v.Dead, v.Undecided, v.Evidence)
	}
	t.Logf("%s", v.Evidence)
}

// TestReach: the collector's check that probing proves something from
// where it runs. A node whose kubelet port listens answers; once the
// node's firewall silently drops that port (as a security group would),
// nothing answers, and Reach says so.
func TestReach(t *testing.T) {
	testnet.RequireRoot(t)
	pair := testnet.NewPair(t)
	pair.Node.Netns.AnswerTCP(t, pair.Node.IPv4, 10250)
	node := &corev1.Node{Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: pair.Node.IPv4.String()}}}}
	p := &liveness.Prober{Attempt: 500 * time.Millisecond, Do: pair.Collector.Netns.Do}
	ctx := context.Background()
	if n := p.Reach(ctx, []*corev1.Node{node}); n != 1 {
		t.Errorf("a listening kubelet port: %d answered, want 1", n)
	}
	pair.Node.Netns.DropTCP(t, 10250)
	if n := p.Reach(ctx, []*corev1.Node{node, node}); n != 0 {
		t.Errorf("a dropped kubelet port: %d answered, want 0", n)
	}
}
