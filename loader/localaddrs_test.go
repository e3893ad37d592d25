package loader_test

import (
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/lastgasp/lastgasp/bpf"
	"github.com/lastgasp/lastgasp/internal/testrig/packettest"
	"github.com/lastgasp/lastgasp/internal/testrig/testnet"
	"github.com/lastgasp/lastgasp/loader"
)

// TestSetLocalAddressesFullTable replaces a full table of local addresses
// (LOCAL_ADDRS_MAX) by another full one that keeps half of them, as on a
// host with close to that many addresses when half of them change. The
// two sets together do not fit, and SetLocalAddresses once added the new
// addresses before it removed the old, failing with E2BIG on the first new
// one. While it runs, datagrams to kept addresses are sent through the
// program without pause: none may be taken for another host's. Then a set
// one address too large is refused, and the table left as it was.
func TestSetLocalAddressesFullTable(t *testing.T) {
	testnet.RequireRoot(t)
	const max = int(bpf.LastgaspLimitsLOCAL_ADDRS_MAX)
	dir := pinDir(t)
	prog := load(t, loader.Config{LocalOnly: true, NoContext: true, RingBufSize: 1 << 16, PinPath: dir})
	table := localAddrsMap(t, dir)

	oldSet := testAddrs(0, max)
	newSet := testAddrs(max/2, max) // its first half is oldSet's second
	kept := newSet[:max/2]
	if err := prog.SetLocalAddresses(oldSet); err != nil {
		t.Fatalf("fill the table: %v", err)
	}
	checkTable(t, table, oldSet)

	// Datagrams to kept addresses, both IPv4 and IPv6, from before the
	// change to after it.
	var frames [][]byte
	for i := 0; i < len(kept); i += len(kept) / 64 {
		frames = append(frames, localLine(kept[i]), localLine(kept[i+1]))
	}
	before := counters(t, prog)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var sent int
	var runErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			for _, f := range frames {
				if _, err := prog.XDP().Run(&ebpf.RunOptions{Data: f}); err != nil {
					runErr = err
					return
				}
				sent++
			}
			select {
			case <-stop:
				return
			default:
			}
		}
	}()
	start := time.Now()
	err := prog.SetLocalAddresses(newSet)
	took := time.Since(start)
	close(stop)
	wg.Wait()
	if err != nil {
		t.Fatalf("replace a full table by another sharing half of it: %v", err)
	}
	if runErr != nil {
		t.Fatal(runErr)
	}
	d := counters(t, prog)
	if got := d.Netconsole - before.Netconsole; d.NotLocal != before.NotLocal || got != uint64(sent) {
		t.Errorf("%d datagrams to kept addresses during the change: %d judged, %d taken for another host's (not_local), want all judged",
			sent, got, d.NotLocal-before.NotLocal)
	}
	t.Logf("full table replaced in %v; %d datagrams to kept addresses meanwhile", took, sent)
	checkTable(t, table, newSet)
	for _, tc := range []struct {
		addr  netip.Addr
		local bool
	}{{oldSet[0], false}, {oldSet[1], false}, {kept[0], true}, {kept[1], true}, {newSet[max-2], true}, {newSet[max-1], true}} {
		before := counters(t, prog)
		if _, err := prog.XDP().Run(&ebpf.RunOptions{Data: localLine(tc.addr)}); err != nil {
			t.Fatal(err)
		}
		if local := counters(t, prog).NotLocal == before.NotLocal; local != tc.local {
			t.Errorf("a datagram to %v: judged %v, want %v", tc.addr, local, tc.local)
		}
	}

	// One address too many: refused, the table untouched.
	err = prog.SetLocalAddresses(testAddrs(0, max+1))
	if err == nil || !strings.Contains(err.Error(), "at most 65536") {
		t.Errorf("set %d addresses: error %v, want one saying at most %d", max+1, err, max)
	}
	checkTable(t, table, newSet)

	// The same set again, with an address twice and an IPv4 one also as
	// IPv4-mapped IPv6: max+2 items, max addresses, which fit.
	again := append(append([]netip.Addr{}, newSet...), newSet[0], netip.AddrFrom16(newSet[1].As16()))
	if !newSet[1].Is4() {
		t.Fatalf("testAddrs: %v is not IPv4", newSet[1])
	}
	if err := prog.SetLocalAddresses(again); err != nil {
		t.Errorf("set %d addresses, %d once each: %v", len(again), max, err)
	}
	checkTable(t, table, newSet)
}

// testAddrs returns n distinct addresses from the i-th on: the even ones
// IPv6 (fd00:99::i), the odd ones IPv4 (10.0.0.0/8, i in its last three
// bytes).
func testAddrs(first, n int) []netip.Addr {
	out := make([]netip.Addr, n)
	for j := range out {
		i := first + j
		if i%2 == 0 {
			out[j] = netip.AddrFrom16([16]byte{0xfd, 0, 0, 0x99, 12: byte(i >> 24), 13: byte(i >> 16), 14: byte(i >> 8), 15: byte(i)})
		} else {
			out[j] = netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		}
	}
	return out
}

// localLine is an ordinary console line to dst, port 6666: judged (and
// counted in netconsole) if dst is in the table, else passed and counted
// in not_local.
func localLine(dst netip.Addr) []byte {
	src := packettest.NodeV4
	if dst.Is6() {
		src = packettest.NodeV6
	}
	return packettest.UDP{Src: src, Dst: dst, Payload: []byte("an ordinary line\n")}.Frame()
}

// localAddrsMap opens the program's table of local addresses, pinned in
// dir.
func localAddrsMap(t *testing.T, dir string) *ebpf.Map {
	t.Helper()
	m, err := ebpf.LoadPinnedMap(filepath.Join(dir, bpf.LastgaspMapLocalAddrs), nil)
	if err != nil {
		t.Fatalf("open the pinned table of local addresses: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// checkTable checks that the table holds want's addresses and no other.
func checkTable(t *testing.T, table *ebpf.Map, want []netip.Addr) {
	t.Helper()
	missing := make(map[netip.Addr]bool, len(want))
	for _, a := range want {
		missing[a] = true
	}
	var key bpf.LastgaspBurstKey
	var unused uint8
	var extra []netip.Addr
	n := 0
	iter := table.Iterate()
	for iter.Next(&key, &unused) {
		n++
		a := netip.AddrFrom16(key.Addr).Unmap()
		if !missing[a] {
			extra = append(extra, a)
		}
		delete(missing, a)
	}
	if err := iter.Err(); err != nil {
		t.Fatalf("list the table: %v", err)
	}
	if len(missing) > 0 || len(extra) > 0 {
		var some []netip.Addr
		for a := range missing {
			if some = append(some, a); len(some) == 3 {
				break
			}
		}
		t.Errorf("table of %d addresses: %d missing (%v...), %d extra (%.3v...), want %d", n, len(missing), some, len(extra), extra, len(want))
	}
}
