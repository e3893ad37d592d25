package bench

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/lastgasp/lastgasp/internal/cleanup"
	"github.com/lastgasp/lastgasp/internal/detect"
	"github.com/lastgasp/lastgasp/internal/nodeindex"
	"github.com/lastgasp/lastgasp/internal/pattern"
	"github.com/lastgasp/lastgasp/internal/testrig/clustertest"
	"github.com/lastgasp/lastgasp/internal/testrig/controlplane"
)

// BenchmarkCleanup measures, against a real kube-apiserver and etcd, the
// time from a fatal incident handed to the controller to its Node deleted,
// with the controller's clients as the daemon builds them (the default QPS
// and burst, and the Events on a limit of their own), and the
// deletion cap lifted (with the default cap of 10 a minute, 100 nodes
// would take 10 minutes by design). Setup (creating nodes and pods) is not
// timed. Reports p50 and p99 per node over b.N rounds.
func BenchmarkCleanup(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root")
	}
	cp, err := controlplane.Start(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	defer cp.Stop()
	setup, err := cp.Client()
	if err != nil {
		b.Fatal(err)
	}
	for _, c := range []struct {
		name        string
		nodes, pods int
	}{
		{"1-node-110-pods", 1, 110},
		{"100-nodes-10-pods", 100, 10},
	} {
		b.Run(c.name, func(b *testing.B) {
			cfg := rest.CopyConfig(cp.Config)
			cfg.QPS, cfg.Burst = cleanup.DefaultClientQPS, cleanup.DefaultClientBurst
			cs := kubernetes.NewForConfigOrDie(cfg)
			events := kubernetes.NewForConfigOrDie(cleanup.EventClientConfig(cfg))
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			factory := informers.NewSharedInformerFactory(cs, 0)
			index, err := nodeindex.New(factory)
			if err != nil {
				b.Fatal(err)
			}
			ctrl := cleanup.New(cleanup.Config{Client: cs, EventClient: events, Index: index, MaxNodeDeletionsPerMinute: 1 << 20, Safety: cleanup.Safety{MaxEndedShare: 1}})
			factory.Start(ctx.Done())
			go ctrl.Run(ctx, 4)

			var per []time.Duration
			b.ResetTimer()
			for round := range b.N {
				b.StopTimer()
				names := makeCluster(b, setup, index, fmt.Sprintf("r%d", round), c.nodes, c.pods)
				b.StartTimer()
				start := time.Now()
				for i, name := range names {
					ctrl.Enqueue(detect.Incident{
						ID: fmt.Sprintf("%s-%d", name, round), Source: nodeAddr(round, i), Kind: pattern.KindPanic,
						Fatal: true, Reason: "Kernel panic - not syncing: bench", Cause: "Kernel panic - not syncing: bench", First: start,
					})
				}
				took, err := clustertest.NodesGone(context.Background(), setup, names, func(string) time.Time { return start }, 10*time.Minute)
				if err != nil {
					b.Fatal(err)
				}
				b.Logf("round %d: last node deleted after %v", round, slices.Max(took).Round(time.Millisecond))
				per = append(per, took...)
			}
			b.StopTimer()
			// The last round's Events are still being written: let them
			// finish before the controller stops.
			for deadline := time.Now().Add(time.Minute); ctrl.Pending() > 0 && time.Now().Before(deadline); {
				time.Sleep(50 * time.Millisecond)
			}
			sort.Slice(per, func(i, j int) bool { return per[i] < per[j] })
			b.ReportMetric(float64(per[len(per)/2].Milliseconds()), "p50-ms")
			b.ReportMetric(float64(per[len(per)*99/100].Milliseconds()), "p99-ms")
			b.ReportMetric(0, "ns/op")
		})
	}
}

func nodeAddr(round, i int) netip.Addr {
	return netip.AddrFrom4([4]byte{10, 210, byte(round), byte(i)})
}

// makeCluster creates nodes with pods bound to them, and waits until the
// controller's caches hold them all.
func makeCluster(b *testing.B, cs kubernetes.Interface, index *nodeindex.Index, round string, nodes, pods int) []string {
	ctx := context.Background()
	ns := "bench-" + round
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		b.Fatal(err)
	}
	var names []string
	var wg sync.WaitGroup
	for i := range nodes {
		name := fmt.Sprintf("bench-%s-%d", round, i)
		names = append(names, name)
		n, err := cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
		if err != nil {
			b.Fatal(err)
		}
		var r int
		fmt.Sscanf(round, "r%d", &r)
		n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: nodeAddr(r, i).String()}}
		if _, err := cs.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{}); err != nil {
			b.Fatal(err)
		}
		wg.Go(func() {
			for j := range pods {
				_, err := cs.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
					ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("%s-%d", name, j)},
					Spec:       corev1.PodSpec{NodeName: name, Containers: []corev1.Container{{Name: "c", Image: "busybox"}}},
				}, metav1.CreateOptions{})
				if err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	deadline := time.Now().Add(time.Minute)
	for _, name := range names {
		for {
			got, _ := index.PodsOn(name)
			if len(got) == pods {
				break
			}
			if time.Now().After(deadline) {
				b.Fatalf("cache never held the pods of %s", name)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	return names
}
