package main

import (
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/lastgasp/lastgasp/internal/testrig/testnet"
)

// TestDaemonKilledAnyInstant: 20 dead nodes panic one after the other,
// and the collector is killed (SIGKILL, as an OOM kill would) at a random
// instant 0-3 s after each panic arrived: while it reads the lines,
// assembles them (the incident closes 2 s after the panic line), journals
// the incident or ends the node. Every fourth panic arrives while no
// collector runs at all. After one last start, every node is ended: the
// lines it had read are replayed from the spool, the incidents it had
// journaled are resumed, and the lines it never read wait in the pinned
// ring buffer. The seed is logged, to replay a failure.
func TestDaemonKilledAnyInstant(t *testing.T) {
	cs, _ := controlPlane(t)
	pair := testnet.NewPair(t)
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(uint64(seed), 0))

	const nodes = 20
	conns := make([]*net.UDPConn, nodes)
	name := func(i int) string { return fmt.Sprintf("killed-%02d", i) }
	for i := range nodes {
		b := pair.Node.IPv4.As4()
		b[3] = byte(10 + i)
		addr := netip.AddrFrom4(b)
		if _, err := pair.Node.Netns.IP("addr", "add", addr.String()+"/32", "dev", pair.Node.Ifname); err != nil {
			t.Fatal(err)
		}
		if err := pair.Node.Netns.Do(func() (err error) {
			conns[i], err = net.ListenUDP("udp4", &net.UDPAddr{IP: addr.AsSlice(), Port: 6665})
			return err
		}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conns[i].Close() })
		makeNode(t, cs, name(i), addr.String(), 1)
	}
	args := []string{"--mode", "xdp", "--interface", pair.Collector.Ifname, "--xdp-mode", "native",
		"--kubeconfig", kubeconfigIn(t, pair.Collector.Netns), "--confirm", "none",
		"--journal", t.TempDir(), "--pin-path", pinPath(t),
		"--max-ended-share", "1", // 20 nodes end here: no share brake,
		"--storm-nodes", "100"} // and no storm of their one crash
	dst := &net.UDPAddr{IP: pair.Collector.IPv4.AsSlice(), Port: 6666}

	var d *daemonProc
	for i := range nodes {
		if i%4 == 3 {
			replay(t, conns[i], dst, "sysrq-ext-v4.pcap")
			continue
		}
		d = startDaemon(t, pair.Collector.Netns, args...)
		replay(t, conns[i], dst, "sysrq-ext-v4.pcap")
		wait := time.Duration(rng.Int64N(int64(3 * time.Second)))
		time.Sleep(wait) // the random instant of the kill
		d.kill()
		t.Logf("panic %d: killed %v after it was sent", i, wait.Round(time.Millisecond))
	}
	d = startDaemon(t, pair.Collector.Netns, args...)
	for i := range nodes {
		waitNodeGone(t, cs, name(i), 60*time.Second, d.out)
	}
	if code := d.stop(t, 10*time.Second); code != exitOK {
		t.Errorf("exit %d after SIGTERM:\n%s", code, d.out.String())
	}
}
