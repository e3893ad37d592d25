package loader_test

import (
	"context"
	"net/netip"
	"slices"
	"testing"

	"github.com/lastgasp/lastgasp/internal/localaddr"
	"github.com/lastgasp/lastgasp/internal/testrig/testnet"
	"github.com/lastgasp/lastgasp/loader"
)

// TestLocalOnly runs the program with LocalOnly on a veth pair, its table
// of local addresses filled and kept current by localaddr in the
// collector's namespace. A panic line to port 6666 of another address
// (traffic a router or gateway forwards) is passed and counted in
// not_local, never judged nor forwarded; to the collector's address it is
// forwarded; and once the other address is added to the collector's
// interface (a netlink address event), it is judged too.
func TestLocalOnly(t *testing.T) {
	pair := testnet.NewPair(t)
	prog := load(t, loader.Config{LocalOnly: true, NoContext: true})

	// The watcher, opened in the collector's namespace: it lists and
	// follows that namespace's addresses from any goroutine.
	var w *localaddr.Watcher
	if err := pair.Collector.Netns.Do(func() error {
		var err error
		w, err = localaddr.Open()
		return err
	}); err != nil {
		t.Fatal(err)
	}
	addrs, err := w.Addrs()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(addrs, pair.Collector.IPv4) || !slices.Contains(addrs, pair.Collector.IPv6) {
		t.Fatalf("local addresses %v: want the collector's %v and %v", addrs, pair.Collector.IPv4, pair.Collector.IPv6)
	}
	if err := prog.SetLocalAddresses(addrs); err != nil {
		t.Fatal(err)
	}
	updates := make(chan []netip.Addr, 16)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		done <- w.Run(ctx, func(addrs []netip.Addr) {
			if err := prog.SetLocalAddresses(addrs); err != nil {
				t.Errorf("set local addresses: %v", err)
			}
			updates <- addrs
		})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("watcher: %v", err)
		}
		w.Close()
	})

	attach(t, pair, prog, loader.ModeNative)
	rd := newReader(t, prog)
	barrier := listen(t, pair, barrierPort)
	s := newSender(t, pair, false)

	// Another address on the collector's link: the node sends to it
	// through the collector's MAC, as to a router.
	b := pair.Collector.IPv4.As4()
	b[3] = 77
	other := netip.AddrFrom4(b)
	if _, err := pair.Node.Netns.IP("neigh", "replace", other.String(), "lladdr", pair.Collector.MAC.String(), "dev", pair.Node.Ifname); err != nil {
		t.Fatal(err)
	}
	sendTo := func(dst netip.Addr) {
		t.Helper()
		if _, err := s.conn.WriteToUDPAddrPort([]byte(panicText), netip.AddrPortFrom(dst, netconsolePort)); err != nil {
			t.Fatal(err)
		}
		flush(t, s, barrier)
	}

	before := counters(t, prog)
	sendTo(other)
	c := counters(t, prog)
	if c.NotLocal-before.NotLocal != 1 || c.Netconsole != before.Netconsole || c.Matched != before.Matched {
		t.Errorf("to %v: counters %+v, before %+v: want it passed as not_local, not judged", other, c, before)
	}
	expectNoLine(t, rd)

	sendTo(pair.Collector.IPv4)
	ctxRead, cancelRead := context.WithTimeout(t.Context(), timeout)
	defer cancelRead()
	if l := readLine(t, ctxRead, rd); string(l.Payload) != panicText {
		t.Errorf("to the collector: forwarded %q, want the panic", l.Payload)
	}

	// The address comes up on the collector: the watcher follows.
	if _, err := pair.Collector.Netns.IP("addr", "add", other.String()+"/24", "dev", pair.Collector.Ifname); err != nil {
		t.Fatal(err)
	}
	for {
		var addrs []netip.Addr
		select {
		case addrs = <-updates:
		case <-ctxRead.Done():
			t.Fatalf("no address update with %v", other)
		}
		if slices.Contains(addrs, other) {
			break
		}
	}
	before = counters(t, prog)
	sendTo(other)
	if l := readLine(t, ctxRead, rd); string(l.Payload) != panicText {
		t.Errorf("to %v once local: forwarded %q, want the panic", other, l.Payload)
	}
	if c := counters(t, prog); c.NotLocal != before.NotLocal {
		t.Errorf("to %v once local: counted not_local", other)
	}
}

const panicText = "[    3.053091] Kernel panic - not syncing: Fatal exception"
