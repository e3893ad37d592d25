package agent

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"

	discoveryv1 "k8s.io/api/discovery/v1"
)

// TestChoose: two collectors a node, every collector chosen by some node,
// and a collector gone moves only the nodes that had chosen it, keeping
// their other choice.
func TestChoose(t *testing.T) {
	var collectors []netip.Addr
	for i := 1; i <= 5; i++ {
		collectors = append(collectors, netip.AddrFrom4([4]byte{10, 0, 9, byte(i)}))
	}
	gone := collectors[2]
	rest := slices.DeleteFunc(slices.Clone(collectors), func(a netip.Addr) bool { return a == gone })
	chosenBy := map[netip.Addr]int{}
	for i := range 1000 {
		node := fmt.Sprintf("node-%d", i)
		before := Choose(node, collectors, 2)
		if len(before) != 2 || before[0] == before[1] {
			t.Fatalf("%s: %v, want two collectors", node, before)
		}
		for _, c := range before {
			chosenBy[c]++
		}
		after := Choose(node, rest, 2)
		if !slices.Contains(before, gone) {
			if !slices.Equal(before, after) {
				t.Errorf("%s moved from %v to %v, though %s was not its", node, before, after, gone)
			}
			continue
		}
		kept := before[0]
		if kept == gone {
			kept = before[1]
		}
		if !slices.Contains(after, kept) {
			t.Errorf("%s: %v after %s left, lost %s", node, after, gone, kept)
		}
	}
	for _, c := range collectors {
		if chosenBy[c] == 0 {
			t.Errorf("%s chosen by no node", c)
		}
	}
	if got := Choose("n", collectors[:1], 2); len(got) != 1 {
		t.Errorf("one collector: %v", got)
	}
}

// TestAddresses: ready (or unknown) endpoints' addresses, each once,
// sorted, across slices.
func TestAddresses(t *testing.T) {
	no, yes := false, true
	got := Addresses([]*discoveryv1.EndpointSlice{
		{Endpoints: []discoveryv1.Endpoint{
			{Addresses: []string{"10.0.9.2"}},
			{Addresses: []string{"10.0.9.3"}, Conditions: discoveryv1.EndpointConditions{Ready: &no}},
			{Addresses: []string{"10.0.9.1"}, Conditions: discoveryv1.EndpointConditions{Ready: &yes}},
		}},
		{Endpoints: []discoveryv1.Endpoint{{Addresses: []string{"fd00::1", "10.0.9.2", "junk"}}}},
	})
	want := []netip.Addr{netip.MustParseAddr("10.0.9.1"), netip.MustParseAddr("10.0.9.2"), netip.MustParseAddr("fd00::1")}
	if !slices.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
}
