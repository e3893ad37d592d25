package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkDaemonForgedFlood is issue 13's benchmark through the whole
// daemon: a lastgasp run (socket mode on loopback, --journal,
// report-only) gets forged triggers at a steady rate, each from a new
// random source address (127.x.y.z; half "BUG:" lines, half panic lines),
// and 5 s into the flood a real panic (sysrq-v4.pcap, from 127.0.0.1).
// Every forged incident is decoded, assembled, journaled (group commit)
// and finished, in line with the real one. One iteration is one such run.
// It reports how long after its first packet was sent the real panic was
// assembled into a fatal incident and logged (s-to-incident: its settle
// time, 2 s, is most of it), and the flood's achieved rate (forged/s).
// forged=0/s is the same run without a flood: the usual time. The
// /cluster cases add a real API server (see floodRun) and measure to the
// real panic's Node deleted.
//
//	go test -run '^$' -bench DaemonForgedFlood -benchtime 3x ./cmd/lastgasp/
func BenchmarkDaemonForgedFlood(b *testing.B) {
	for _, cluster := range []bool{false, true} {
		for _, rate := range []int{0, 10_000} {
			name := fmt.Sprintf("forged=%d/s", rate)
			if cluster {
				name += "/cluster"
			}
			b.Run(name, func(b *testing.B) { floodRun(b, rate, cluster) })
		}
	}
}

// floodRun is one of BenchmarkDaemonForgedFlood's cases. With cluster,
// the run has a real API server in which 127.0.0.1 is a Node's address
// (3 pods, --confirm none), and what is measured ends when the daemon
// logs the real incident finished with its Node deleted: its own
// since_first_packet (s-to-node-deleted).
func floodRun(b *testing.B, rate int, cluster bool) {
	{
		{
			var took, flooded time.Duration
			var forged int64
			n := 0
			for b.Loop() {
				args := []string{"--journal", b.TempDir()}
				node := ""
				if cluster {
					cs, kubeconfig := controlPlane(b)
					node = fmt.Sprintf("flood-%d-%d", n, time.Now().UnixNano())
					makeNode(b, cs, node, "127.0.0.1", 3)
					args = append(args, "--report-only=false", "--kubeconfig", kubeconfig, "--confirm", "none",
						"--max-ended-share", "1", "--max-node-deletions-per-minute", "100", "--storm-nodes", "100")
				}
				r := startSocketRun(b, args...)
				dst := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: r.port}
				ctx, stop := context.WithCancel(context.Background())
				var sent atomic.Int64
				// Two senders share the count, so together they keep
				// to the rate where one alone falls behind.
				floodDone := make(chan time.Duration, 2)
				for range 2 {
					go func() { floodDone <- flood(ctx, dst, rate, &sent) }()
				}
				time.Sleep(5 * time.Second) // the flood under way

				conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
				if err != nil {
					b.Fatal(err)
				}
				start := time.Now()
				replay(b, conn, dst, "sysrq-v4.pcap")
				conn.Close()
				// The forged incidents are of other kinds: the real one's
				// log line is not held back by the log aggregator.
				for deadline := start.Add(60 * time.Second); !loggedKind(&r.out, "sysrq"); time.Sleep(10 * time.Millisecond) {
					if time.Now().After(deadline) {
						b.Fatalf("the real panic was not assembled in 60 s:\n%s", r.out.String())
					}
				}
				took += time.Since(start)
				if cluster {
					took -= time.Since(start)
					took += nodeDeleted(b, &r.out, node)
				}
				stop()
				flooded += max(<-floodDone, <-floodDone)
				forged += sent.Load()
				r.stop(b)
				n++
			}
			if cluster {
				b.ReportMetric(took.Seconds()/float64(n), "s-to-node-deleted")
			} else {
				b.ReportMetric(took.Seconds()/float64(n), "s-to-incident")
			}
			if rate > 0 {
				b.ReportMetric(float64(forged)/flooded.Seconds(), "forged/s")
			}
		}
	}
}

// nodeDeleted waits for the daemon to log the incident about node
// finished, and returns its since_first_packet: from the first packet
// received to the Node deleted.
func nodeDeleted(b *testing.B, out *syncBuffer, node string) time.Duration {
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		for _, rec := range logged(out, "incident finished") {
			if rec["node"] != node {
				continue
			}
			if rec["outcome"] != "cleaned up" {
				b.Fatalf("the real panic: %v", rec)
			}
			d, err := time.ParseDuration(rec["since_first_packet"].(string))
			if err != nil {
				b.Fatal(err)
			}
			return d
		}
		if time.Now().After(deadline) {
			b.Fatalf("node %s not finished in 60 s:\n%s", node, out.String())
		}
	}
}

// loggedKind reports whether the log holds a fatal incident of the kind.
func loggedKind(out *syncBuffer, kind string) bool {
	for _, rec := range logged(out, "incident") {
		if rec["kind"] == kind && rec["fatal"] == true {
			return true
		}
	}
	return false
}

// flood sends forged trigger datagrams to dst until ctx is done, each
// from a new random 127.x.y.z source (never 127.0.0.1), until sent
// reaches rate a second since it started (floods sharing sent share the
// work); it returns how long it ran. It keeps to the rate over time: a
// late tick sends what is due.
func flood(ctx context.Context, dst *net.UDPAddr, rate int, sent *atomic.Int64) time.Duration {
	start := time.Now()
	if rate == 0 {
		<-ctx.Done()
		return time.Since(start)
	}
	rng := rand.New(rand.NewPCG(uint64(start.UnixNano()), 13))
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return time.Since(start)
		case now := <-tick.C:
			due := int64(now.Sub(start).Seconds() * float64(rate))
			for i := sent.Load(); i < due; i = sent.Add(1) {
				src := net.IPv4(127, byte(1+rng.IntN(254)), byte(rng.IntN(256)), byte(1+rng.IntN(254)))
				c, err := net.DialUDP("udp", &net.UDPAddr{IP: src}, dst)
				if err != nil {
					continue // a source address taken: the next one
				}
				if i%2 == 0 {
					fmt.Fprintf(c, "[%5d.%06d] BUG: kernel NULL pointer dereference, address: %016x\n", 100+i/1_000_000, i%1_000_000, rng.Uint64())
				} else {
					fmt.Fprintf(c, "[%5d.%06d] Kernel panic - not syncing: forged %d\n", 100+i/1_000_000, i%1_000_000, i)
				}
				c.Close()
			}
		}
	}
}
