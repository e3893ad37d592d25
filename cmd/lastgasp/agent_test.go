package main

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/lastgasp/lastgasp/internal/agent"
	"github.com/lastgasp/lastgasp/internal/netconsolesetup"
	"github.com/lastgasp/lastgasp/internal/nodeindex"
	"github.com/lastgasp/lastgasp/internal/testrig/clustertest"
	"github.com/lastgasp/lastgasp/internal/testrig/testnet"
)

// TestAgent runs "lastgasp agent" as a process in a node's network
// namespace, against the real API server: collectors from the
// EndpointSlices of the collector Service (three, two chosen by
// rendezvous hashing), each target what the routes and neighbours of the
// namespace say, the Node annotated with the source addresses, a
// collector gone and the targets following, then no collector reachable
// and an Event on the Node.
//
// netconsole's configfs is a plain directory here: this host has no
// netconsole, and a real one would not do anyway, since the kernel finds
// a target's dev_name in the initial network namespace only, never in a
// test's (the qemu test in internal/netconsolesetup runs the real one).
func TestAgent(t *testing.T) {
	cs, _ := controlPlane(t)
	pair := testnet.NewPair(t)
	kubeconfig := kubeconfigIn(t, pair.Node.Netns)
	ctx := context.Background()

	// A third collector address on the collector's end, no permanent
	// neighbour entry: the agent must provoke ARP for it.
	third := pair.Collector.IPv4.As4()
	third[3] = 3
	thirdAddr := netip.AddrFrom4(third)
	if _, err := pair.Collector.Netns.IP("addr", "add", thirdAddr.String()+"/24", "dev", pair.Collector.Ifname); err != nil {
		t.Fatal(err)
	}

	nodeName := clustertest.Unique("agent-node")
	node := clustertest.Node(t, cs, nodeName, clustertest.InternalIP("192.0.2.1"), nil)
	ns := clustertest.Unique("agent")
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	slice := func(name string, family discoveryv1.AddressType, addrs ...netip.Addr) *discoveryv1.EndpointSlice {
		s := &discoveryv1.EndpointSlice{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns,
				Labels: map[string]string{discoveryv1.LabelServiceName: "lastgasp-collector"}},
			AddressType: family,
		}
		for _, a := range addrs {
			s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{Addresses: []string{a.String()}})
		}
		return s
	}
	for _, sl := range []*discoveryv1.EndpointSlice{
		slice("c4", discoveryv1.AddressTypeIPv4, pair.Collector.IPv4, thirdAddr),
		slice("c6", discoveryv1.AddressTypeIPv6, pair.Collector.IPv6),
	} {
		if _, err := cs.DiscoveryV1().EndpointSlices(ns).Create(ctx, sl, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// setCollectors makes the slices hold addrs.
	setCollectors := func(addrs ...netip.Addr) {
		t.Helper()
		var a4, a6 []netip.Addr
		for _, a := range addrs {
			if a.Is4() {
				a4 = append(a4, a)
			} else {
				a6 = append(a6, a)
			}
		}
		for _, sl := range []*discoveryv1.EndpointSlice{
			slice("c4", discoveryv1.AddressTypeIPv4, a4...),
			slice("c6", discoveryv1.AddressTypeIPv6, a6...),
		} {
			old, err := cs.DiscoveryV1().EndpointSlices(ns).Get(ctx, sl.Name, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			old.Endpoints = sl.Endpoints
			if _, err := cs.DiscoveryV1().EndpointSlices(ns).Update(ctx, old, metav1.UpdateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
	}

	dir := t.TempDir()
	metricsAddr := freeTCPAddr(t)
	d := startCommand(t, pair.Node.Netns, "lastgasp agent watching", "agent", "--kubeconfig", kubeconfig,
		"--node-name", nodeName, "--service", ns+"/lastgasp-collector", "--configfs", dir,
		"--resync", "1s", "--metrics-addr", metricsAddr)

	// want waits until the directory holds exactly the targets of the
	// collectors node chooses among addrs, each as the routes say.
	want := func(addrs ...netip.Addr) []netip.Addr {
		t.Helper()
		chosen := agent.Choose(nodeName, addrs, 2)
		var names []string
		for _, c := range chosen {
			names = append(names, netconsolesetup.TargetName(c))
		}
		slices.Sort(names)
		clustertest.Eventually(t, 10*time.Second, "targets "+strings.Join(names, ","), func() bool {
			ents, _ := os.ReadDir(dir)
			var got []string
			for _, e := range ents {
				got = append(got, e.Name())
			}
			return slices.Equal(got, names)
		})
		for _, c := range chosen {
			src := pair.Node.IPv4
			if c.Is6() {
				src = pair.Node.IPv6
			}
			target := filepath.Join(dir, netconsolesetup.TargetName(c))
			for attr, value := range map[string]string{
				"enabled": "1", "extended": "1", "dev_name": pair.Node.Ifname, "local_ip": src.String(),
				"remote_ip": c.String(), "remote_port": "6666", "remote_mac": pair.Collector.MAC.String(),
			} {
				got, _ := os.ReadFile(filepath.Join(target, attr))
				if strings.TrimSpace(string(got)) != value {
					t.Errorf("%s: %s = %q, want %q", filepath.Base(target), attr, got, value)
				}
			}
		}
		return chosen
	}
	sources := func(chosen []netip.Addr) string {
		var out []string
		for _, c := range chosen {
			s := pair.Node.IPv4.String()
			if c.Is6() {
				s = pair.Node.IPv6.String()
			}
			if !slices.Contains(out, s) {
				out = append(out, s)
			}
		}
		return strings.Join(out, ",")
	}
	annotated := func(value string) {
		t.Helper()
		clustertest.Eventually(t, 10*time.Second, "annotation "+value, func() bool {
			n, err := cs.CoreV1().Nodes().Get(ctx, nodeName, metav1.GetOptions{})
			return err == nil && n.Annotations[nodeindex.SourceAnnotation] == value
		})
	}

	all := []netip.Addr{pair.Collector.IPv4, thirdAddr, pair.Collector.IPv6}
	chosen := want(all...)
	annotated(sources(chosen))
	scrapeFor(t, pair.Node.Netns.Do, metricsAddr, "lastgasp_agent_netconsole_setup_ok 1", "lastgasp_agent_netconsole_targets 2")

	// The first choice goes: the targets follow.
	rest := slices.DeleteFunc(slices.Clone(all), func(a netip.Addr) bool { return a == chosen[0] })
	setCollectors(rest...)
	chosen = want(rest...)
	annotated(sources(chosen))

	// No route to the only collector left: an Event on the Node, the
	// metrics say so, the last good annotation stays.
	setCollectors(netip.MustParseAddr("198.51.100.7"))
	var ev corev1.Event
	clustertest.Eventually(t, 10*time.Second, "a "+agent.FailureReason+" Event", func() bool {
		for _, e := range clustertest.EventsFor(t, cs, metav1.NamespaceDefault, node.UID) {
			if e.Reason == agent.FailureReason {
				ev = e
				return true
			}
		}
		return false
	})
	if !strings.Contains(ev.Message, "no route to collector 198.51.100.7") || ev.Type != corev1.EventTypeWarning {
		t.Errorf("event: %s %q", ev.Type, ev.Message)
	}
	scrapeFor(t, pair.Node.Netns.Do, metricsAddr, "lastgasp_agent_netconsole_setup_ok 0")
	if code := d.stop(t, 10*time.Second); code != exitOK {
		t.Errorf("agent exit %d:\n%s", code, d.out.String())
	}
}
