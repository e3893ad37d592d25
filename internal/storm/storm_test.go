package storm_test

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"

	"github.com/lastgasp/lastgasp/internal/cleanup"
	"github.com/lastgasp/lastgasp/internal/crashrecord"
	"github.com/lastgasp/lastgasp/internal/detect"
	"github.com/lastgasp/lastgasp/internal/nodeindex"
	"github.com/lastgasp/lastgasp/internal/pattern"
	"github.com/lastgasp/lastgasp/internal/storm"
	"github.com/lastgasp/lastgasp/internal/testrig/clustertest"
	"github.com/lastgasp/lastgasp/internal/testrig/controlplane"
)

// cp is the control plane the tests share, with the KernelCrash CRD.
var cp *controlplane.ControlPlane

func TestMain(m *testing.M) {
	controlplane.TestMain(m, "storm", &cp, (*controlplane.ControlPlane).InstallKernelCrashCRD)
}

// outcomes keeps what OnDone is told, by incident id.
type outcomes struct {
	mu   sync.Mutex
	seen map[string]cleanup.Outcome
}

func (o *outcomes) done(inc detect.Incident, outcome cleanup.Outcome, _ string, _ time.Time) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.seen[inc.ID] = outcome
}

func (o *outcomes) get() map[string]cleanup.Outcome {
	o.mu.Lock()
	defer o.mu.Unlock()
	return maps.Clone(o.seen)
}

// collector is a cleanup controller that records and holds storms.
type collector struct {
	*cleanup.Controller
	index  *nodeindex.Index
	storms *storm.Detector
	ended  *outcomes
}

func startCollector(t *testing.T, cs kubernetes.Interface, store *crashrecord.Store, nodes int) *collector {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	factory := informers.NewSharedInformerFactory(cs, 0)
	index, err := nodeindex.New(factory)
	if err != nil {
		t.Fatal(err)
	}
	storms := storm.New(storm.Config{Nodes: nodes, Window: time.Hour, Store: store, Events: cs, Instance: "test"})
	rec := &crashrecord.Recorder{Store: store, Instance: "test"}
	ended := &outcomes{seen: map[string]cleanup.Outcome{}}
	c := cleanup.New(cleanup.Config{Client: cs, Index: index, Record: rec.Record, Hold: storms.Hold, OnDone: ended.done,
		Safety: cleanup.Safety{MaxEndedShare: 1}, MaxNodeDeletionsPerMinute: 100})
	factory.Start(ctx.Done())
	done := make(chan struct{})
	go func() { defer close(done); c.Run(ctx, 4) }()
	t.Cleanup(func() { cancel(); <-done; factory.Shutdown() })
	if err := index.WaitForSync(ctx); err != nil {
		t.Fatal(err)
	}
	return &collector{Controller: c, index: index, storms: storms, ended: ended}
}

// crash makes a node at addr, hands the collector a panic of it with the
// given cause and call trace (the same bug on every node: only the
// addresses, PIDs and times differ), and waits until it is finished.
func (c *collector) crash(t *testing.T, cs kubernetes.Interface, addr string, pid int, cause, fn string) (detect.Incident, string) {
	t.Helper()
	node := clustertest.Node(t, cs, clustertest.Unique("node"), clustertest.InternalIP(addr), nil)
	t.Cleanup(func() { cs.CoreV1().Nodes().Delete(context.Background(), node.Name, metav1.DeleteOptions{}) })
	inc := detect.Incident{
		ID:     clustertest.Unique("inc")[4:] + "0123456789",
		Source: netip.MustParseAddr(addr), Kind: pattern.KindOops, Fatal: true,
		Reason: "Kernel panic - not syncing: Fatal exception", Cause: fmt.Sprintf(cause, pid),
		First: time.Now().Add(-time.Second), Last: time.Now(),
		Lines: []string{
			fmt.Sprintf("[    %d.763251] ", pid) + fmt.Sprintf(cause, pid),
			fmt.Sprintf("[    3.765806] CPU: 0 PID: %d Comm: worker-%d Tainted: G OE 6.1.0-56-amd64 #1", pid, pid),
			fmt.Sprintf("[    3.771621] RIP: 0010:%s+0x%x/0x1000 [crashmod]", fn, pid),
			"[    3.775775] Call Trace:",
			fmt.Sprintf("[    3.779221]  do_one_initcall+0x%x/0x220", pid),
			"[    3.786363]  </TASK>",
		},
	}
	clustertest.Eventually(t, 10*time.Second, "cache never held "+node.Name, func() bool {
		n, _, _ := c.index.NodeFor(inc.Source)
		return n != nil
	})
	c.Enqueue(inc)
	clustertest.Eventually(t, 30*time.Second, "incident not finished", func() bool { _, ok := c.ended.get()[inc.ID]; return ok })
	return inc, node.Name
}

func clients(t *testing.T) (*kubernetes.Clientset, *crashrecord.Store) {
	t.Helper()
	cs, err := cp.Client()
	if err != nil {
		t.Fatal(err)
	}
	dyn, err := dynamic.NewForConfig(cp.Config)
	if err != nil {
		t.Fatal(err)
	}
	return cs, crashrecord.NewStore(dyn)
}

// TestStormHolds: the same crash on 5 nodes, at most 3 allowed: the
// first 3 nodes are ended, the 4th and 5th are not (finished as a
// storm, counted once, every record marked); a different crash meanwhile
// is ended; and a collector started afresh sees the storm in the records.
func TestStormHolds(t *testing.T) {
	cs, store := clients(t)
	c := startCollector(t, cs, store, 3)
	const cause = "BUG: unable to handle page fault for address: %08x"
	fn := strings.ReplaceAll(clustertest.Unique("storm_fn"), "-", "_") // a crash of this test's own
	var ids []string
	for i := range 5 {
		inc, node := c.crash(t, cs, fmt.Sprintf("10.230.0.%d", 10+i), 100+i, cause, fn)
		ids = append(ids, inc.ID)
		_, err := cs.CoreV1().Nodes().Get(context.Background(), node, metav1.GetOptions{})
		if gone := apierrors.IsNotFound(err); gone != (i < 3) {
			t.Errorf("crash %d: node deleted %v", i+1, gone)
		}
	}
	other, _ := c.crash(t, cs, "10.230.0.20", 7, "general protection fault: %04x [#1] SMP", fn+"_other")
	got := c.ended.get()
	for i, id := range ids {
		want := cleanup.OutcomeCleanedUp
		if i >= 3 {
			want = cleanup.OutcomeStorm
		}
		if got[id] != want {
			t.Errorf("crash %d: %q, want %q", i+1, got[id], want)
		}
		kc, err := store.Get(context.Background(), id)
		if err != nil || !kc.Spec.Storm {
			t.Errorf("crash %d: record not marked a storm's: %+v %v", i+1, kc, err)
		}
	}
	if got[other.ID] != cleanup.OutcomeCleanedUp {
		t.Errorf("another crash: %q", got[other.ID])
	}
	if n := c.storms.Storms.Load(); n != 1 {
		t.Errorf("%d storms announced, want 1", n)
	}
	if n := c.Stats().Stormed.Load(); n != 2 {
		t.Errorf("%d held, want 2", n)
	}
	// One Event, about the crash that tipped it.
	kc, err := store.Get(context.Background(), ids[3])
	if err != nil {
		t.Fatal(err)
	}
	ev, err := cs.CoreV1().Events(metav1.NamespaceDefault).Get(context.Background(), "lastgasp-storm-"+kc.Spec.Signature.ID, metav1.GetOptions{})
	sig := kc.Spec.Signature.ID
	if err != nil || ev.Reason != storm.EventReasonStorm || ev.InvolvedObject.Name != ids[3] || !strings.Contains(ev.Message, "struck 4 nodes") ||
		!strings.Contains(ev.Message, "kubectl get kernelcrashes -l lastgasp.io/signature="+sig) {
		t.Errorf("storm event %+v: %v", ev, err)
	}
	// The alert's annotation says how to find them: by the storm label,
	// then by the signature label.
	marked, err := store.List(context.Background(), crashrecord.LabelStorm+"=true,"+crashrecord.LabelSignature+"="+sig)
	if err != nil || len(marked) != 5 {
		t.Errorf("%d records labelled a storm's, want 5: %v", len(marked), err)
	}

	// A collector started afresh knows nothing in memory: the records
	// tell it.
	fresh := startCollector(t, cs, store, 3)
	inc, node := fresh.crash(t, cs, "10.230.0.30", 130, cause, fn)
	if o := fresh.ended.get()[inc.ID]; o != cleanup.OutcomeStorm {
		t.Errorf("after a restart: %q, want %q", o, cleanup.OutcomeStorm)
	}
	if _, err := cs.CoreV1().Nodes().Get(context.Background(), node, metav1.GetOptions{}); err != nil {
		t.Errorf("after a restart, node: %v", err)
	}
}
