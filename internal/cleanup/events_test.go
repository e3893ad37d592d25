package cleanup_test

import (
	"context"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/lastgasp/lastgasp/internal/cleanup"
	"github.com/lastgasp/lastgasp/internal/testrig/clustertest"
)

// TestEventsDoNotHoldTheWorker: a node's Events are written after its
// deletion, at their own client's rate, and not by the worker that ended
// it. With one worker and Events at one a second, the next node is ended
// while the first one's Pod Events are still being written; written by
// the worker, they would all be there before the second node was looked
// at (a hundred nodes at once would wait on each other's Events).
func TestEventsDoNotHoldTheWorker(t *testing.T) {
	cs := client(t)
	slow := rest.CopyConfig(cp.Config)
	slow.QPS, slow.Burst = 1, 1
	c := startWorkers(t, cs, cleanup.Config{EventClient: kubernetes.NewForConfigOrDie(slow)}, 1)
	first := makeNode(t, cs, clustertest.InternalIP("10.200.1.21"), nil)
	ns, pods := makePods(t, cs, first.Name, 5)
	second := makeNode(t, cs, clustertest.InternalIP("10.200.1.22"), nil)
	c.enqueue(t, fatal("10.200.1.21"), len(pods))
	c.enqueue(t, fatal("10.200.1.22"), 0)

	ctx := context.Background()
	clustertest.Eventually(t, 30*time.Second, "the second node was not deleted", func() bool {
		_, err := cs.CoreV1().Nodes().Get(ctx, second.Name, metav1.GetOptions{})
		return apierrors.IsNotFound(err)
	})
	podEvents := func() (n int) {
		for _, p := range pods {
			n += len(clustertest.EventsFor(t, cs, ns, p.UID))
		}
		return n
	}
	if n := podEvents(); n == len(pods) {
		t.Errorf("all %d of the first node's Pod Events were written before the second node was deleted: they held the worker", n)
	}
	// They all come, and Pending counts them until they have.
	clustertest.Eventually(t, 30*time.Second, "work left", func() bool { return c.Pending() == 0 })
	if n := podEvents(); n != len(pods) {
		t.Errorf("%d Pod Events once nothing is pending, want %d", n, len(pods))
	}
}
