package netconsole

import (
	"fmt"
	"net/netip"
	"runtime"
	"testing"
)

// heapBytes returns the live Go heap after a collection.
func heapBytes() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// TestNothingPinned: one line waiting for its continuation, and one
// record waiting for its last fragment, must not keep alive what came
// after them. 200,000 replaced tails and 200,000 completed records behind
// them are forgotten (today's tombstoned expiry lists kept them: ~30 MiB
// here), and what the decoder counts is what it holds.
func TestNothingPinned(t *testing.T) {
	d := NewDecoder(Config{})
	waiting := netip.MustParseAddrPort("10.99.0.7:6665")
	d.Decode(waiting, []byte("[    1.000000] waits for ever"), t0)
	d.Decode(waiting, []byte("4,1,1,-,ncfrag=0/100;stuck"), t0)
	before := heapBytes()
	const n = 200_000
	text := make([]byte, 100)
	for i := range text {
		text[i] = 'a' + byte(i%26)
	}
	for i := range n {
		// A cut line from node, replaced by the next one.
		d.Decode(node, fmt.Appendf(nil, "[%5d.%06d] %s", 2+i/1_000_000, i%1_000_000, text), t0)
		// A record in two fragments, completed.
		for _, f := range fragments(fmt.Sprintf("4,%d,1,-", 10+i), string(text), 60) {
			d.Decode(node, []byte(f), t0)
		}
	}
	grown := int64(heapBytes()) - int64(before)
	if grown > 4<<20 {
		t.Errorf("heap grew by %d KiB behind one waiting line and record, %d bytes counted", grown>>10, d.pendingBytes)
	}
	runtime.KeepAlive(d)
}
