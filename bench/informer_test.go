package bench

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"sync"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/lastgasp/lastgasp/internal/nodeindex"
	"github.com/lastgasp/lastgasp/internal/testrig/controlplane"
)

// BenchmarkInformerHeap measures what a collector's caches hold on the Go
// heap for a cluster of 10,000 pods (and 100 nodes), in a real API server:
// "plain" is a Node and a Pod informer as client-go makes them (what the
// collector cached before), "nodeindex" the collector's own, which drops
// managedFields before caching. Reports heap-MiB after a GC, the
// informers synced.
func BenchmarkInformerHeap(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root")
	}
	cp, err := controlplane.Start(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	defer cp.Stop()
	cfg := rest.CopyConfig(cp.Config)
	cfg.QPS, cfg.Burst = 2000, 2000
	cs := kubernetes.NewForConfigOrDie(cfg)
	fill(b, cs, 100, 100)
	for _, c := range []struct {
		name string
		make func(informers.SharedInformerFactory) error
	}{
		{"plain", func(f informers.SharedInformerFactory) error {
			f.Core().V1().Nodes().Informer()
			f.Core().V1().Pods().Informer()
			return nil
		}},
		{"nodeindex", func(f informers.SharedInformerFactory) error {
			_, err := nodeindex.New(f)
			return err
		}},
	} {
		b.Run(c.name, func(b *testing.B) {
			for range b.N {
				before := liveHeap()
				ctx, cancel := context.WithCancel(context.Background())
				f := informers.NewSharedInformerFactory(cs, 0)
				if err := c.make(f); err != nil {
					b.Fatal(err)
				}
				f.Start(ctx.Done())
				for _, ok := range f.WaitForCacheSync(ctx.Done()) {
					if !ok {
						b.Fatal("caches not synced")
					}
				}
				b.ReportMetric(float64(liveHeap()-before)/(1<<20), "heap-MiB")
				runtime.KeepAlive(f)
				cancel()
				f.Shutdown()
			}
		})
	}
}

// liveHeap is the heap in use after a collection.
func liveHeap() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// fill makes nodes Nodes and pods Pods on each, as a cluster's would be
// (labels, a container with resources, written by a field manager).
func fill(b *testing.B, cs kubernetes.Interface, nodes, pods int) {
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan error, nodes)
	sem := make(chan struct{}, 32)
	for n := range nodes {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			name := fmt.Sprintf("heap-node-%03d", n)
			if _, err := cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name,
				Labels: map[string]string{"kubernetes.io/hostname": name, "node.kubernetes.io/instance-type": "m7g.4xlarge", "topology.kubernetes.io/zone": "zone-a"}}},
				metav1.CreateOptions{FieldManager: "kubelet"}); err != nil {
				errs <- err
				return
			}
			for p := range pods {
				pod := &corev1.Pod{
					ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("%s-pod-%03d", name, p), Namespace: "default",
						Labels: map[string]string{"app": "batch", "job-name": name, "controller-uid": "00000000-0000-0000-0000-000000000000"}},
					Spec: corev1.PodSpec{NodeName: name, Containers: []corev1.Container{{
						Name: "main", Image: "registry.example/batch/worker:1.2.3", Args: []string{"--shard", fmt.Sprint(p)},
						Env: []corev1.EnvVar{{Name: "SHARD", Value: fmt.Sprint(p)}, {Name: "NODE", Value: name}},
					}}},
				}
				if _, err := cs.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{FieldManager: "kube-controller-manager"}); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
}
