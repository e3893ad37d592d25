package main

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/lastgasp/lastgasp/internal/detect"
	"github.com/lastgasp/lastgasp/internal/testrig/benchenv"
	"github.com/lastgasp/lastgasp/internal/testrig/clustertest"
	"github.com/lastgasp/lastgasp/internal/testrig/testnet"
)

// results is where issue 16's scenario files are written.
const results = "../../bench/results"

// cleanupRow is one case of scenario 3 in bench/results/cleanup.json.
type cleanupRow struct {
	Case    string `json:"case"`
	Nodes   int    `json:"nodes"` // nodes panicking at once, each from its own address
	Pods    int    `json:"pods"`  // pods on each node
	Rounds  int    `json:"rounds"`
	Samples int    `json:"samples"` // nodes measured: nodes x rounds
	// From the first packet of a node's panic sent (into the veth, to
	// the daemon's XDP program) to its Node seen deleted by a List
	// every 20 ms.
	P50Ms float64 `json:"p50_ms"`
	P99Ms float64 `json:"p99_ms"`
	MaxMs float64 `json:"max_ms"`
	// The same as the daemon logs it ("incident finished"
	// since_first_packet: from the first packet it read to the deletion
	// call returning).
	DaemonP50Ms float64 `json:"daemon_p50_ms"`
	DaemonP99Ms float64 `json:"daemon_p99_ms"`
	// What the time is made of: the incident is held open SettleMs after
	// the panic line (detect.DefaultSettleTime) before it goes to the
	// cleanup; the rest is the cleanup itself (its pods failed and
	// deleted, then the Node).
	SettleMs         float64 `json:"settle_ms"`
	AfterSettleP50Ms float64 `json:"after_settle_p50_ms"`
	AfterSettleP99Ms float64 `json:"after_settle_p99_ms"`
	PodsLeft         int     `json:"pods_left"` // pods of the deleted nodes still in the API server
	Source           string  `json:"source"`    // what measured it
}

// cleanupResults is bench/results/cleanup.json.
type cleanupResults struct {
	Machine   string       `json:"machine"`
	Kernel    string       `json:"kernel"`
	LoadStart float64      `json:"load_average_start"` // one-minute load average
	LoadEnd   float64      `json:"load_average_end"`
	Rows      []cleanupRow `json:"rows"`
}

// BenchmarkDaemonCleanup is issue 16's scenario 3 through the whole
// daemon: a lastgasp run in XDP mode (native, on the collector's end of a
// veth pair, in its own network namespace) with a real API server and
// --confirm none; nodes panic (a real capture, sysrq-ext-v4.pcap) from
// the other end, each from an address of its own, and each is timed
// from its first packet to its Node deleted. Two cases: one node with
// 110 pods (10 rounds), and 100 nodes with 10 pods each, at once (2
// rounds). The deletion cap, share brake and storm brake are lifted (at
// their defaults 100 nodes would take 10 minutes, by design). Writes
// bench/results/cleanup.json; run it with make bench-cleanup.
func BenchmarkDaemonCleanup(b *testing.B) {
	cs, kubeconfig := controlPlane(b)
	for b.Loop() {
		res := cleanupResults{Machine: benchenv.Machine(), Kernel: benchenv.Kernel(), LoadStart: benchenv.LoadAverage()}
		pair := testnet.NewPair(b)
		r := startCollector(b, pair, "--mode", "xdp", "--interface", pair.Collector.Ifname, "--xdp-mode", "native",
			"--kubeconfig", kubeconfig, "--confirm", "none", "--feed-addr", "",
			"--max-ended-share", "1", "--max-node-deletions-per-minute", "100000", "--storm-nodes", "100000")
		host := 10 // the last byte of the next node's address
		for _, c := range []struct {
			name               string
			nodes, pods, round int
		}{
			{"1-node-110-pods", 1, 110, 10},
			{"100-nodes-10-pods", 100, 10, 2},
		} {
			row := cleanupRow{Case: c.name, Nodes: c.nodes, Pods: c.pods, Rounds: c.round,
				SettleMs: millis(detect.DefaultSettleTime), Source: "BenchmarkDaemonCleanup (cmd/lastgasp)"}
			var took, daemon []time.Duration
			for round := range c.round {
				t, d, left := cleanupRound(b, cs, pair, r, fmt.Sprintf("cl%d-%d", round, time.Now().UnixNano()%1e6), host, c.nodes, c.pods)
				host += c.nodes
				took, daemon = append(took, t...), append(daemon, d...)
				row.PodsLeft += left
				b.Logf("%s round %d: last node deleted %v after its first packet", c.name, round, slices.Max(t).Round(time.Millisecond))
			}
			row.Samples = len(took)
			row.P50Ms, row.P99Ms, row.MaxMs = pct(took, 50), pct(took, 99), pct(took, 100)
			row.DaemonP50Ms, row.DaemonP99Ms = pct(daemon, 50), pct(daemon, 99)
			row.AfterSettleP50Ms = math.Round((row.P50Ms-row.SettleMs)*10) / 10
			row.AfterSettleP99Ms = math.Round((row.P99Ms-row.SettleMs)*10) / 10
			b.ReportMetric(row.P50Ms, c.name+"-p50-ms")
			b.ReportMetric(row.P99Ms, c.name+"-p99-ms")
			res.Rows = append(res.Rows, row)
		}
		r.stop(b)
		res.LoadEnd = benchenv.LoadAverage()
		if err := benchenv.WriteJSON(results+"/cleanup.json", res); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(0, "ns/op")
}

// cleanupRound makes nodes Nodes with pods pods each, whose addresses
// are host, host+1, ... in the pair's node subnet, has each panic from
// its address at once, and returns how long each Node took to go, from
// its first packet sent and as the daemon logged it, and the pods left.
func cleanupRound(b *testing.B, cs kubernetes.Interface, pair *testnet.Pair, r *running, prefix string, host, nodes, pods int) (took, daemon []time.Duration, left int) {
	b.Helper()
	names := make([]string, nodes)
	addrs, conns := nodeSources(b, pair, host, nodes)
	for i, addr := range addrs {
		names[i] = fmt.Sprintf("%s-%03d", prefix, i)
		clustertest.Node(b, cs, names[i], clustertest.InternalIP(addr.String()), nil)
	}
	// The pods, every node's at once (the rig's client allows 200
	// requests a second).
	var wg sync.WaitGroup
	errs := make(chan error, nodes)
	for _, name := range names {
		wg.Go(func() { errs <- runningPods(cs, "ns-"+name, name, pods) })
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			b.Fatal(err)
		}
	}
	// The daemon's informers get them by watch, within milliseconds;
	// a second more so that no round finds its cache behind.
	time.Sleep(time.Second)

	dst := &net.UDPAddr{IP: pair.Collector.IPv4.AsSlice(), Port: 6666}
	start := make(map[string]time.Time, nodes)
	for i, name := range names {
		start[name] = time.Now()
		replay(b, conns[i], dst, "sysrq-ext-v4.pcap")
	}
	took, err := clustertest.NodesGone(context.Background(), cs, names, func(name string) time.Time { return start[name] }, 5*time.Minute)
	if err != nil {
		b.Fatalf("%v:\n%s", err, r.out.String())
	}
	for _, name := range names {
		left += podsLeft(b, cs, "ns-"+name)
	}
	daemon = sinceFirstPacket(b, &r.out, names)
	return took, daemon, left
}

// runningPods creates the namespace ns and n Running pods in it bound to
// node, as clustertest.Pods does, but safe to call from any goroutine.
func runningPods(cs kubernetes.Interface, ns, node string, n int) error {
	ctx := context.Background()
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create namespace %s: %w", ns, err)
	}
	for i := range n {
		p, err := cs.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("pod-%d", i)},
			Spec:       corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "c", Image: "busybox"}}},
		}, metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("create pod %d on %s: %w", i, node, err)
		}
		p.Status.Phase = corev1.PodRunning
		if _, err := cs.CoreV1().Pods(ns).UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
			return fmt.Errorf("mark pod %d on %s running: %w", i, node, err)
		}
	}
	return nil
}

// sinceFirstPacket returns the since_first_packet the daemon logged for
// each named node's cleanup.
func sinceFirstPacket(b *testing.B, out *syncBuffer, names []string) []time.Duration {
	b.Helper()
	var ds []time.Duration
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		ds = ds[:0]
		for _, rec := range logged(out, "incident finished") {
			if n, _ := rec["node"].(string); slices.Contains(names, n) && rec["outcome"] == "cleaned up" {
				s, _ := rec["since_first_packet"].(string)
				if d, err := time.ParseDuration(s); err == nil {
					ds = append(ds, d)
				}
			}
		}
		if len(ds) == len(names) || time.Now().After(deadline) {
			return ds
		}
	}
}

// pct is the p-th percentile of ds in milliseconds (the nearest rank;
// 100: the largest), 0 for none.
func pct(ds []time.Duration, p int) float64 {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Sorted(slices.Values(ds))
	i := min(len(s)-1, (len(s)*p+99)/100-1)
	return millis(s[max(i, 0)])
}

// millis is d in milliseconds, to a tenth.
func millis(d time.Duration) float64 {
	return math.Round(float64(d.Microseconds())/100) / 10
}

// restartResults is bench/results/restart.json.
type restartResults struct {
	Machine   string  `json:"machine"`
	Kernel    string  `json:"kernel"`
	LoadStart float64 `json:"load_average_start"` // one-minute load average
	LoadEnd   float64 `json:"load_average_end"`
	Seed      int64   `json:"seed"`
	Runs      int     `json:"runs"`
	// Panics sent (of them, while no daemon ran), the panics whose Node
	// was deleted (recall: ended/sent), the daemon's starts (the
	// restarts are starts - runs) and its SIGKILLs, each at a random
	// instant 0-3 s after a panic was sent.
	PanicsSent          int     `json:"panics_sent"`
	PanicsSentWhileDown int     `json:"panics_sent_while_down"`
	PanicsEnded         int     `json:"panics_that_ended_their_node"`
	Recall              float64 `json:"recall"`
	Starts              int     `json:"starts"`
	Restarts            int     `json:"restarts"`
	Kills               int     `json:"kills"`
}

// BenchmarkDaemonRestart is issue 16's scenario 4: TestDaemonKilledAnyInstant's
// run (panics from 20 nodes, the daemon SIGKILLed at a random instant
// 0-3 s after each, every fourth sent while none runs, pinned maps and a
// journal carrying over) b.N times, counting the panics that ended their
// node. Writes bench/results/restart.json; run it with make bench-restart.
func BenchmarkDaemonRestart(b *testing.B) {
	seed := time.Now().UnixNano()
	b.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(uint64(seed), 0))
	res := restartResults{Machine: benchenv.Machine(), Kernel: benchenv.Kernel(), LoadStart: benchenv.LoadAverage(), Seed: seed}
	for b.Loop() {
		got := killAnyInstant(b, fmt.Sprintf("restart-%d-%d", res.Runs, seed%1e6), 20, rng)
		res.Runs++
		res.PanicsSent += got.Sent
		res.PanicsSentWhileDown += got.SentWhileDown
		res.PanicsEnded += got.Ended
		res.Starts += got.Starts
		res.Kills += got.Kills
	}
	res.Restarts = res.Starts - res.Runs
	res.Recall = math.Round(float64(res.PanicsEnded)/float64(res.PanicsSent)*1000) / 1000
	res.LoadEnd = benchenv.LoadAverage()
	b.ReportMetric(res.Recall, "recall")
	b.ReportMetric(0, "ns/op")
	if err := benchenv.WriteJSON(results+"/restart.json", res); err != nil {
		b.Fatal(err)
	}
}
