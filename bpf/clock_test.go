package bpf_test

import (
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/lastgasp/lastgasp/bpf"
	"github.com/lastgasp/lastgasp/internal/testrig/packettest"
	"github.com/lastgasp/lastgasp/loader"
)

// lastMatchNs reads the program's state.last_match_ns.
func lastMatchNs(t *testing.T, h *harness) uint64 {
	t.Helper()
	info, err := h.sc.Program().XDP().Info()
	if err != nil {
		t.Fatalf("program info: %v", err)
	}
	ids, ok := info.MapIDs()
	if !ok {
		t.Skip("this kernel does not report a program's maps")
	}
	for _, id := range ids {
		m, err := ebpf.NewMapFromID(id)
		if err != nil {
			t.Fatalf("map %d: %v", id, err)
		}
		mi, err := m.Info()
		if err != nil || mi.Name != bpf.LastgaspMapState {
			m.Close()
			continue
		}
		var st bpf.LastgaspSharedState
		err = m.Lookup(uint32(0), &st)
		m.Close()
		if err != nil {
			t.Fatalf("read state: %v", err)
		}
		return st.LastMatchNs
	}
	t.Fatal("no state map among the program's maps")
	return 0
}

// TestLastMatchCleared checks the mark that lets ordinary lines skip the
// clock: a match sets state.last_match_ns; a line judged before the
// burst timeout keeps it (and is context); the first line after it clears
// it to 0, and the next match sets it again and opens a burst whose
// lines are context.
func TestLastMatchCleared(t *testing.T) {
	h := newHarness(t, loader.Config{BurstLines: 5, ContextLines: 5, BurstTimeout: 200 * time.Millisecond})
	match := packettest.Line(panicLine).Frame()
	ordinary := packettest.Line("[    3.000000] ordinary\n").Frame()
	other := packettest.UDP{Src: netip.MustParseAddr("10.99.0.3"), Payload: []byte("[    3.000000] ordinary\n")}.Frame()
	flag := func(frame []byte) string {
		if _, lines := h.send(frame); len(lines) == 1 {
			return lines[0].Flag.String()[:1]
		}
		return "-"
	}
	if v := lastMatchNs(t, h); v != 0 {
		t.Fatalf("last_match_ns %d before any match, want 0", v)
	}
	got := flag(match) + flag(ordinary) + flag(other)
	first := lastMatchNs(t, h)
	if first == 0 {
		t.Fatal("last_match_ns 0 after a match")
	}
	time.Sleep(300 * time.Millisecond)
	got += flag(other) // finds the timeout passed: clears the mark
	if v := lastMatchNs(t, h); v != 0 {
		t.Errorf("last_match_ns %d after the burst timeout and a line, want 0", v)
	}
	got += flag(ordinary) + flag(match) + flag(ordinary)
	if v := lastMatchNs(t, h); v <= first {
		t.Errorf("last_match_ns %d after a second match, want > %d", v, first)
	}
	if got != "mc---mc" {
		t.Errorf("lines: %s, want mc---mc", got)
	}
}
