package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

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
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	got := killAnyInstant(t, "killed", 20, rand.New(rand.NewPCG(uint64(seed), 0)))
	if got.Ended != got.Sent {
		t.Errorf("%d of %d nodes ended", got.Ended, got.Sent)
	}
}

// killedRun is what one killAnyInstant did: panics sent (of them, while
// no collector ran), nodes those panics ended, collector starts and
// SIGKILLs.
type killedRun struct {
	Sent, SentWhileDown, Ended, Starts, Kills int
}

// killAnyInstant runs TestDaemonKilledAnyInstant's scenario on nodes
// dead nodes named prefix-NN, each panicking from an address of its own,
// and counts the nodes ended within 60 s of the last start. It fails t
// only when the rig itself fails.
func killAnyInstant(t testing.TB, prefix string, nodes int, rng *rand.Rand) killedRun {
	t.Helper()
	cs, _ := controlPlane(t)
	pair := testnet.NewPair(t)
	name := func(i int) string { return fmt.Sprintf("%s-%02d", prefix, i) }
	addrs, conns := nodeSources(t, pair, 10, nodes)
	for i, addr := range addrs {
		makeNode(t, cs, name(i), addr.String(), 1)
	}
	args := []string{"--mode", "xdp", "--interface", pair.Collector.Ifname, "--xdp-mode", "native",
		"--kubeconfig", kubeconfigIn(t, pair.Collector.Netns), "--confirm", "none",
		"--journal", t.TempDir(), "--pin-path", pinPath(t),
		"--max-ended-share", "1", // these nodes all end here: no share brake,
		"--storm-nodes", "100000"} // and no storm of their one crash
	dst := &net.UDPAddr{IP: pair.Collector.IPv4.AsSlice(), Port: 6666}

	var run killedRun
	var d *daemonProc
	for i := range nodes {
		run.Sent++
		if i%4 == 3 {
			replay(t, conns[i], dst, "sysrq-ext-v4.pcap")
			run.SentWhileDown++
			continue
		}
		d = startDaemon(t, pair.Collector.Netns, args...)
		run.Starts++
		replay(t, conns[i], dst, "sysrq-ext-v4.pcap")
		wait := time.Duration(rng.Int64N(int64(3 * time.Second)))
		time.Sleep(wait) // the random instant of the kill
		d.kill()
		run.Kills++
		t.Logf("panic %d: killed %v after it was sent", i, wait.Round(time.Millisecond))
	}
	d = startDaemon(t, pair.Collector.Netns, args...)
	run.Starts++
	ended := map[string]bool{}
	for deadline := time.Now().Add(60 * time.Second); len(ended) < nodes && time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		for i := range nodes {
			if ended[name(i)] {
				continue
			}
			if _, err := cs.CoreV1().Nodes().Get(context.Background(), name(i), metav1.GetOptions{}); apierrors.IsNotFound(err) {
				ended[name(i)] = true
			}
		}
	}
	run.Ended = len(ended)
	if run.Ended != nodes {
		t.Logf("%d of %d nodes ended in 60 s:\n%s", run.Ended, nodes, d.out.String())
	}
	if code := d.stop(t, 10*time.Second); code != exitOK {
		t.Errorf("exit %d after SIGTERM:\n%s", code, d.out.String())
	}
	return run
}

// nodeSources gives the pair's node end n more addresses in its subnet,
// the last byte from host on, each with netconsole's socket (port 6665)
// bound to it, closed when t ends.
func nodeSources(t testing.TB, pair *testnet.Pair, host, n int) ([]netip.Addr, []*net.UDPConn) {
	t.Helper()
	addrs := make([]netip.Addr, n)
	conns := make([]*net.UDPConn, n)
	for i := range n {
		b := pair.Node.IPv4.As4()
		b[3] = byte(host + i)
		addrs[i] = netip.AddrFrom4(b)
		if _, err := pair.Node.Netns.IP("addr", "add", addrs[i].String()+"/32", "dev", pair.Node.Ifname); err != nil {
			t.Fatal(err)
		}
		if err := pair.Node.Netns.Do(func() (err error) {
			conns[i], err = net.ListenUDP("udp4", &net.UDPAddr{IP: addrs[i].AsSlice(), Port: 6665})
			return err
		}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conns[i].Close() })
	}
	return addrs, conns
}
