package loader_test

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/lastgasp/lastgasp/internal/filter"
	"github.com/lastgasp/lastgasp/internal/testrig/testnet"
	"github.com/lastgasp/lastgasp/loader"
)

// TestJumboMTUNative attaches the program natively to a veth whose MTU is
// 9000. veth refuses native XDP at that MTU to a program that does not
// take multi-buffer frames (xdp.frags), as mlx5, ice and i40e do, so this
// fails unless the program is frags-aware. Then datagrams of up to 8,900
// bytes arrive as multi-buffer frames (the first buffer holds about 3.5
// KB, the rest is in fragments): a panic line that long is forwarded, cut
// to the record's size and flagged, and an ordinary one is dropped, over
// IPv4 and IPv6; neither is taken for a malformed packet because its IP
// length reaches past the first buffer.
func TestJumboMTUNative(t *testing.T) {
	pair := testnet.NewPair(t)
	for _, e := range []*testnet.End{&pair.Node, &pair.Collector} {
		if _, err := e.Netns.IP("link", "set", "dev", e.Ifname, "mtu", "9000"); err != nil {
			t.Fatalf("MTU 9000: %v", err)
		}
	}
	prog := load(t, loader.Config{NoContext: true})
	if a := attach(t, pair, prog, loader.ModeNative); a.Mode != loader.ModeNative {
		t.Fatalf("attached in mode %q, want %q", a.Mode, loader.ModeNative)
	}
	rd := newReader(t, prog)
	barrier := listen(t, pair, barrierPort)
	const head = "[    5.000000] Kernel panic - not syncing: "
	ordinary := "[    5.000001] " + strings.Repeat("o", 8900-15)
	for _, ipv6 := range []bool{false, true} {
		s := newSender(t, pair, ipv6)
		for _, size := range []int{100, 3000, 4000, 8900} {
			text := head + strings.Repeat("x", size-len(head))
			s.send(t, netconsolePort, text)
			s.send(t, netconsolePort, ordinary)
			flush(t, s, barrier)

			ctx, cancel := context.WithTimeout(t.Context(), timeout)
			got := readLine(t, ctx, rd)
			cancel()
			want := text[:min(size, filter.MaxPayload)]
			if got.Source != s.source() || got.Flag != filter.Match ||
				got.PatternID != defaultPatternID("Kernel panic - not syncing") ||
				got.Truncated != (size > filter.MaxPayload) || !bytes.Equal(got.Payload, []byte(want)) {
				t.Errorf("ipv6 %v, %d bytes: got %s %s pattern %d truncated %v, %d bytes %.40q...",
					ipv6, size, got.Source, got.Flag, got.PatternID, got.Truncated, len(got.Payload), got.Payload)
			}
			expectNoLine(t, rd)
		}
	}
	c := counters(t, prog)
	if c.Malformed != 0 || c.Netconsole != 16 || c.Matched != 8 || c.Truncated != 6 || c.Dropped != 16 {
		t.Errorf("counters %+v: want 16 netconsole lines dropped, 8 matched, 6 truncated, none malformed", c)
	}
}
