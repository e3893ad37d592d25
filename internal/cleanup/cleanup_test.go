package cleanup_test

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/lastgasp/lastgasp/internal/cleanup"
	"github.com/lastgasp/lastgasp/internal/detect"
	"github.com/lastgasp/lastgasp/internal/liveness"
	"github.com/lastgasp/lastgasp/internal/nodeindex"
	"github.com/lastgasp/lastgasp/internal/pattern"
	"github.com/lastgasp/lastgasp/internal/testrig/clustertest"
	"github.com/lastgasp/lastgasp/internal/testrig/controlplane"
	"github.com/lastgasp/lastgasp/internal/testrig/testnet"
)

// cp is the control plane every test shares (started once: ~6 s).
var cp *controlplane.ControlPlane

func TestMain(m *testing.M) {
	controlplane.TestMain(m, "cleanup", &cp)
}

func client(t *testing.T) *kubernetes.Clientset {
	t.Helper()
	c, err := cp.Client()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// collector is a controller with its own informers, as a separate
// collector would have.
type collector struct {
	*cleanup.Controller
	index *nodeindex.Index
}

// start runs a collector with 4 workers until the test ends.
func start(t *testing.T, cs kubernetes.Interface, cfg cleanup.Config) *collector {
	t.Helper()
	return startWorkers(t, cs, cfg, 4)
}

// startWorkers runs a collector with the given number of workers until
// the test ends.
func startWorkers(t *testing.T, cs kubernetes.Interface, cfg cleanup.Config, workers int) *collector {
	t.Helper()
	if cfg.MaxEndedShare == 0 {
		// The tests share one cluster, whose nodes come and go: the
		// share brake is off unless a test is about it.
		cfg.MaxEndedShare = 1
	}
	ctx, cancel := context.WithCancel(context.Background())
	factory := informers.NewSharedInformerFactory(cs, 0)
	index, err := nodeindex.New(factory)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Client == nil { // a test may give the controller a client of its own
		cfg.Client = cs
	}
	cfg.Index = index
	c := cleanup.New(cfg)
	factory.Start(ctx.Done())
	done := make(chan struct{})
	go func() { defer close(done); c.Run(ctx, workers) }()
	t.Cleanup(func() { cancel(); <-done; factory.Shutdown() })
	if err := index.WaitForSync(ctx); err != nil {
		t.Fatal(err)
	}
	return &collector{Controller: c, index: index}
}

// enqueue hands the incident over once the collector's cache holds the
// source's node and its pods (in a live cluster the node has existed for
// long; here it was created a moment ago).
func (c *collector) enqueue(t *testing.T, inc detect.Incident, pods int) {
	t.Helper()
	clustertest.Eventually(t, 10*time.Second, "cache never held the node of "+inc.Source.String(), func() bool {
		n, _, _ := c.index.NodeFor(inc.Source)
		if n == nil {
			return false
		}
		got, _ := c.index.PodsOn(n.Name)
		return len(got) == pods
	})
	c.Enqueue(inc)
}

// makeNode registers a Node with a name of its own, the given addresses
// and annotations, deleted when the test ends.
func makeNode(t *testing.T, cs kubernetes.Interface, addrs []corev1.NodeAddress, annotations map[string]string) *corev1.Node {
	t.Helper()
	n := clustertest.Node(t, cs, clustertest.Unique("node"), addrs, annotations)
	t.Cleanup(func() { cs.CoreV1().Nodes().Delete(context.Background(), n.Name, metav1.DeleteOptions{}) })
	return n
}

// makePods binds n pods to node in a new namespace; the first ends
// Succeeded. Each holds the test finalizer until the test ends.
func makePods(t *testing.T, cs kubernetes.Interface, node string, n int) (string, []*corev1.Pod) {
	t.Helper()
	ns := clustertest.Unique("ns")
	pods := clustertest.Pods(t, cs, ns, node, n, clustertest.Hold)
	t.Cleanup(func() { clustertest.Release(cs, ns) })
	if n > 0 {
		pods[0].Status.Phase = corev1.PodSucceeded
		var err error
		if pods[0], err = cs.CoreV1().Pods(ns).UpdateStatus(context.Background(), pods[0], metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	return ns, pods
}

func fatal(src string) detect.Incident {
	return detect.Incident{
		ID:     clustertest.Unique("inc")[4:] + "0123456789",
		Source: netip.MustParseAddr(src),
		Kind:   pattern.KindOops,
		Fatal:  true,
		Reason: "Kernel panic - not syncing: Fatal exception",
		Cause:  "BUG: kernel NULL pointer dereference, address: 0000000000000000",
		First:  time.Now().Add(-time.Second),
		Last:   time.Now(),
	}
}

func nodeGone(cs kubernetes.Interface, name string) func() bool {
	return func() bool {
		_, err := cs.CoreV1().Nodes().Get(context.Background(), name, metav1.GetOptions{})
		return apierrors.IsNotFound(err)
	}
}

// TestFatalIncident: a node found by its InternalIP, with 110 pods (one
// already Succeeded): every pod failed with the condition and
// annotations, an Event each, deleted with grace 0; then the node
// annotated, its Event, deleted.
func TestFatalIncident(t *testing.T) {
	cs := client(t)
	c := start(t, cs, cleanup.Config{})
	node := makeNode(t, cs, clustertest.InternalIP("10.200.0.11"), nil)
	ns, _ := makePods(t, cs, node.Name, 110)

	inc := fatal("10.200.0.11")
	start := time.Now()
	c.enqueue(t, inc, 110)
	clustertest.Eventually(t, 60*time.Second, "node not deleted", nodeGone(cs, node.Name))
	t.Logf("110 pods and the node cleaned up in %v", time.Since(start).Round(time.Millisecond))
	// The Events come after the Node's deletion, before the work is done.
	clustertest.Eventually(t, 10*time.Second, "work left", func() bool { return c.Pending() == 0 })

	pods, err := cs.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{})
	if err != nil || len(pods.Items) != 110 {
		t.Fatalf("%d pods held, %v", len(pods.Items), err)
	}
	for i := range pods.Items {
		p := &pods.Items[i]
		want := corev1.PodFailed
		if p.Name == "pod-0" {
			want = corev1.PodSucceeded // a terminal phase is kept
		}
		clustertest.CheckPodEnded(t, p, inc, want)
		if *p.DeletionGracePeriodSeconds != 0 {
			t.Errorf("%s: grace period %d", p.Name, *p.DeletionGracePeriodSeconds)
		}
		if ev := clustertest.EventsFor(t, cs, ns, p.UID); len(ev) != 1 || ev[0].Reason != cleanup.EventReasonNodeKernelPanic {
			t.Errorf("%s: events %+v", p.Name, ev)
		}
	}
	if ev := clustertest.EventsFor(t, cs, "", node.UID); len(ev) != 1 || ev[0].Reason != cleanup.EventReasonNodeKernelPanic || !strings.Contains(ev[0].Message, inc.Cause) {
		t.Errorf("node events %+v", ev)
	}
	if s := c.Stats(); s.NodesDeleted.Load() != 1 || s.PodsDeleted.Load() != 110 || s.APIErrors.Load() != 0 {
		t.Errorf("stats: %d nodes, %d pods deleted, %d API errors", s.NodesDeleted.Load(), s.PodsDeleted.Load(), s.APIErrors.Load())
	}
}

// TestFindingTheNode: by IPv6 InternalIP, by ExternalIP, by the override
// annotation; an unknown source touches nothing.
func TestFindingTheNode(t *testing.T) {
	cs := client(t)
	var done outcomes
	c := start(t, cs, cleanup.Config{OnDone: done.record})
	v6 := makeNode(t, cs, clustertest.InternalIP("fd00:200::12"), nil)
	ext := makeNode(t, cs, []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "10.200.0.13"}, {Type: corev1.NodeExternalIP, Address: "192.0.2.13"}}, nil)
	override := makeNode(t, cs, clustertest.InternalIP("10.200.0.14"), map[string]string{nodeindex.SourceAnnotation: "10.201.0.14, fd00:201::14"})
	bystander := makeNode(t, cs, clustertest.InternalIP("10.200.0.15"), nil)

	want := map[string]cleanup.Outcome{} // by incident id
	for _, src := range []string{"fd00:200:0::12", "192.0.2.13", "fd00:201::14"} {
		inc := fatal(src)
		c.enqueue(t, inc, 0)
		want[inc.ID] = cleanup.OutcomeCleanedUp
	}
	unknown := fatal("10.9.9.9") // no node's
	c.Enqueue(unknown)
	want[unknown.ID] = cleanup.OutcomeUnknownSource
	for _, n := range []*corev1.Node{v6, ext, override} {
		clustertest.Eventually(t, 30*time.Second, n.Name+" not deleted", nodeGone(cs, n.Name))
	}
	clustertest.Eventually(t, 10*time.Second, "unknown source not counted", func() bool { return c.Stats().UnknownSource.Load() == 1 })

	// Two nodes claiming one address: neither is deleted.
	claimant := makeNode(t, cs, clustertest.InternalIP("10.200.0.16"), map[string]string{nodeindex.SourceAnnotation: "10.200.0.15"})
	clustertest.Eventually(t, 10*time.Second, "cache never held the claimant", func() bool {
		_, ambiguous, _ := c.index.NodeFor(netip.MustParseAddr("10.200.0.15"))
		return ambiguous
	})
	ambiguous := fatal("10.200.0.15")
	c.Enqueue(ambiguous)
	want[ambiguous.ID] = cleanup.OutcomeAmbiguous
	clustertest.Eventually(t, 10*time.Second, "ambiguous source not refused", func() bool { return c.Stats().Ambiguous.Load() == 1 })
	for _, n := range []*corev1.Node{bystander, claimant} {
		if _, err := cs.CoreV1().Nodes().Get(context.Background(), n.Name, metav1.GetOptions{}); err != nil {
			t.Errorf("%s: %v", n.Name, err)
		}
	}
	// Each incident finished once, with what was done to it.
	if got := done.get(); !maps.Equal(got, want) {
		t.Errorf("outcomes %v, want %v", got, want)
	}
}

// TestNodeName: the node name netconsole's userdata carries (kernel 6.9+)
// picks, of two Nodes claiming the source, the one it names; a name
// that is not the source's Node ends nothing, whether the source is
// another Node's or no Node's; a name of no Node is ignored.
func TestNodeName(t *testing.T) {
	cs := client(t)
	var done outcomes
	c := start(t, cs, cleanup.Config{OnDone: done.record})
	named := makeNode(t, cs, clustertest.InternalIP("10.200.0.21"), nil)
	claimant := makeNode(t, cs, clustertest.InternalIP("10.200.0.22"), map[string]string{nodeindex.SourceAnnotation: "10.200.0.21"})
	victim := makeNode(t, cs, clustertest.InternalIP("10.200.0.23"), nil)
	sender := makeNode(t, cs, clustertest.InternalIP("10.200.0.24"), nil)
	hostnamed := makeNode(t, cs, clustertest.InternalIP("10.200.0.25"), nil)
	clustertest.Eventually(t, 10*time.Second, "cache never held the claimant", func() bool {
		_, ambiguous, _ := c.index.NodeFor(netip.MustParseAddr("10.200.0.21"))
		n, _, _ := c.index.NodeFor(netip.MustParseAddr("10.200.0.25"))
		return ambiguous && n != nil
	})
	want := map[string]cleanup.Outcome{}
	incident := func(src, name string, outcome cleanup.Outcome) {
		inc := fatal(src)
		inc.NodeName = name
		c.Enqueue(inc)
		want[inc.ID] = outcome
	}
	incident("10.200.0.21", named.Name, cleanup.OutcomeCleanedUp)        // two claim the address: the name settles it
	incident("10.200.0.24", victim.Name, cleanup.OutcomeNameMismatch)    // another node's address: neither ended
	incident("10.9.9.21", victim.Name, cleanup.OutcomeNameMismatch)      // no node's address: the name alone ends nothing
	incident("10.200.0.25", "host-25.example", cleanup.OutcomeCleanedUp) // a hostname, no Node's name: the address decides
	clustertest.Eventually(t, 30*time.Second, named.Name+" not deleted", nodeGone(cs, named.Name))
	clustertest.Eventually(t, 30*time.Second, hostnamed.Name+" not deleted", nodeGone(cs, hostnamed.Name))
	clustertest.Eventually(t, 10*time.Second, "all finished", func() bool { return len(done.get()) == len(want) })
	if got := done.get(); !maps.Equal(got, want) {
		t.Errorf("outcomes %v, want %v", got, want)
	}
	for _, n := range []*corev1.Node{claimant, victim, sender} {
		if _, err := cs.CoreV1().Nodes().Get(context.Background(), n.Name, metav1.GetOptions{}); err != nil {
			t.Errorf("%s: %v", n.Name, err)
		}
	}
	if s := c.Stats(); s.NameMismatch.Load() != 2 || s.Ambiguous.Load() != 0 {
		t.Errorf("stats: %d name mismatches, %d ambiguous", s.NameMismatch.Load(), s.Ambiguous.Load())
	}
}

// outcomes records what OnDone reports, once an incident.
type outcomes struct {
	mu   sync.Mutex
	seen map[string]cleanup.Outcome
}

func (o *outcomes) record(inc detect.Incident, outcome cleanup.Outcome, _ string, _ time.Time) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.seen == nil {
		o.seen = map[string]cleanup.Outcome{}
	}
	if prev, dup := o.seen[inc.ID]; dup {
		outcome = "twice: " + prev + ", " + outcome
	}
	o.seen[inc.ID] = outcome
}

func (o *outcomes) get() map[string]cleanup.Outcome {
	o.mu.Lock()
	defer o.mu.Unlock()
	return maps.Clone(o.seen)
}

// TestNonFatal: annotation, Event and taint on the node (its other taint
// kept); nothing deleted. A node deleted meanwhile is not recreated.
func TestNonFatal(t *testing.T) {
	cs := client(t)
	c := start(t, cs, cleanup.Config{TaintNonFatal: true})
	node := makeNode(t, cs, clustertest.InternalIP("10.200.0.21"), nil)
	other := corev1.Taint{Key: "example.com/maintenance", Effect: corev1.TaintEffectNoExecute}
	node.Spec.Taints = []corev1.Taint{other}
	node, err := cs.CoreV1().Nodes().Update(context.Background(), node, metav1.UpdateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ns, pods := makePods(t, cs, node.Name, 3)
	inc := fatal("10.200.0.21")
	inc.Fatal, inc.Kind, inc.Reason = false, pattern.KindWarning, "WARNING: CPU: 0 PID: 111 at x.c:28"
	c.enqueue(t, inc, 3)
	clustertest.Eventually(t, 20*time.Second, "node not tainted", func() bool {
		n, err := cs.CoreV1().Nodes().Get(context.Background(), node.Name, metav1.GetOptions{})
		if err != nil || len(n.Spec.Taints) != 2 {
			return false
		}
		keys := map[string]bool{n.Spec.Taints[0].Key: true, n.Spec.Taints[1].Key: true}
		return keys[other.Key] && keys[cleanup.TaintKey]
	})
	n, _ := cs.CoreV1().Nodes().Get(context.Background(), node.Name, metav1.GetOptions{})
	if n.Annotations[cleanup.AnnotationKernelIncident] != inc.ID || n.Annotations[cleanup.AnnotationKernelIncidentKind] != "warning" {
		t.Errorf("annotations %v", n.Annotations)
	}
	if ev := clustertest.EventsFor(t, cs, "", node.UID); len(ev) != 1 || ev[0].Reason != cleanup.EventReasonNodeKernelProblem {
		t.Errorf("events %+v", ev)
	}
	for _, p := range pods {
		got, err := cs.CoreV1().Pods(ns).Get(context.Background(), p.Name, metav1.GetOptions{})
		if err != nil || got.DeletionTimestamp != nil || got.Annotations[cleanup.AnnotationIncident] != "" {
			t.Errorf("%s touched: %v %+v", p.Name, err, got.ObjectMeta)
		}
	}

	// A node with no taint yet gets ours; one whose taints changed since
	// the cache saw them is not clobbered: the attempt fails, to be
	// retried once the cache has caught up.
	bare := makeNode(t, cs, clustertest.InternalIP("10.200.0.23"), nil)
	bare.Spec.Taints = nil // the API server gave it node.kubernetes.io/not-ready
	if bare, err = cs.CoreV1().Nodes().Update(context.Background(), bare, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := c.ReportNonFatal(context.Background(), bare, inc); err != nil {
		t.Fatal(err)
	}
	stale := makeNode(t, cs, clustertest.InternalIP("10.200.0.24"), nil)
	changed := stale.DeepCopy()
	changed.Spec.Taints = append(changed.Spec.Taints, other)
	if _, err := cs.CoreV1().Nodes().Update(context.Background(), changed, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := c.ReportNonFatal(context.Background(), stale, inc); err == nil {
		t.Error("taints changed since cached: no error, so no retry")
	}
	for name, want := range map[string][]string{bare.Name: {cleanup.TaintKey}, stale.Name: {"node.kubernetes.io/not-ready", other.Key}} {
		n, err := cs.CoreV1().Nodes().Get(context.Background(), name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		var keys []string
		for _, taint := range n.Spec.Taints {
			keys = append(keys, taint.Key)
		}
		if !slices.Equal(keys, want) {
			t.Errorf("%s: taints %v, want %v", name, keys, want)
		}
	}

	// The node is deleted before the report reaches it: done, nothing made.
	gone := makeNode(t, cs, clustertest.InternalIP("10.200.0.22"), nil)
	if err := cs.CoreV1().Nodes().Delete(context.Background(), gone.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := c.ReportNonFatal(context.Background(), gone, inc); err != nil {
		t.Errorf("report on a deleted node: %v", err)
	}
	if _, err := cs.CoreV1().Nodes().Get(context.Background(), gone.Name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("the deleted node: %v", err)
	}
}

// TestTwoCollectors: two controllers with their own caches apply the same
// incident at once: one set of annotations and Events, each pod's end
// written once, no errors.
func TestTwoCollectors(t *testing.T) {
	cs := client(t)
	a := start(t, cs, cleanup.Config{Instance: "collector-a"})
	b := start(t, cs, cleanup.Config{Instance: "collector-b"})
	node := makeNode(t, cs, clustertest.InternalIP("10.200.0.31"), nil)
	ns, _ := makePods(t, cs, node.Name, 20)
	inc := fatal("10.200.0.31")
	a.enqueue(t, inc, 20)
	b.enqueue(t, inc, 20)
	clustertest.Eventually(t, 30*time.Second, "node not deleted", nodeGone(cs, node.Name))
	clustertest.Eventually(t, 10*time.Second, "work left", func() bool { return a.Pending() == 0 && b.Pending() == 0 })

	pods, _ := cs.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{})
	for i := range pods.Items {
		p := &pods.Items[i]
		want := corev1.PodFailed
		if p.Name == "pod-0" {
			want = corev1.PodSucceeded
		}
		clustertest.CheckPodEnded(t, p, inc, want)
		if ev := clustertest.EventsFor(t, cs, ns, p.UID); len(ev) != 1 {
			t.Errorf("%s: %d events, want 1", p.Name, len(ev))
		}
	}
	if ev := clustertest.EventsFor(t, cs, "", node.UID); len(ev) != 1 {
		t.Errorf("node: %d events, want 1", len(ev))
	}
	if ea, eb := a.Stats().APIErrors.Load(), b.Stats().APIErrors.Load(); ea+eb != 0 {
		t.Errorf("API errors: %d and %d", ea, eb)
	}
	// Each pod's end is written once in all: the collector that comes
	// second sees the first one's annotation and leaves the pod be.
	if fa, fb := a.Stats().PodsFailed.Load(), b.Stats().PodsFailed.Load(); fa+fb != 20 {
		t.Errorf("pod ends written: %d and %d, want 20 in all", fa, fb)
	}
}

// TestStaleCache: the controller acts on pods as its cache holds them,
// which can be a moment behind. A pod that succeeded meanwhile keeps its
// Succeeded phase (the API server would accept Failed over it) and gets
// no DisruptionTarget (it did not die of the panic); one that started
// running meanwhile is Failed; both get the annotations and are deleted;
// an up-to-date one is Failed with the condition.
func TestStaleCache(t *testing.T) {
	cs := client(t)
	c := start(t, cs, cleanup.Config{})
	node := makeNode(t, cs, clustertest.InternalIP("10.200.0.35"), nil)
	ns := clustertest.Unique("ns")
	pods := clustertest.Pods(t, cs, ns, node.Name, 3, clustertest.Hold) // Running
	t.Cleanup(func() { clustertest.Release(cs, ns) })
	ctx := context.Background()

	// pod-0 succeeds after the cache saw it Running.
	done := pods[0].DeepCopy()
	done.Status.Phase = corev1.PodSucceeded
	if _, err := cs.CoreV1().Pods(ns).UpdateStatus(ctx, done, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	// The cache saw pod-1 Pending; it runs now.
	pending := pods[1].DeepCopy()
	pending.Status.Phase = corev1.PodPending
	pending, err := cs.CoreV1().Pods(ns).UpdateStatus(ctx, pending, metav1.UpdateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	running := pending.DeepCopy()
	running.Status.Phase = corev1.PodRunning
	if _, err := cs.CoreV1().Pods(ns).UpdateStatus(ctx, running, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	pods[1] = pending

	inc := fatal("10.200.0.35")
	for _, p := range pods {
		if err := c.EndPod(ctx, p, inc); err != nil {
			t.Fatal(err)
		}
	}
	for i, want := range []corev1.PodPhase{corev1.PodSucceeded, corev1.PodFailed, corev1.PodFailed} {
		got, err := cs.CoreV1().Pods(ns).Get(ctx, pods[i].Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		clustertest.CheckPodEnded(t, got, inc, want)
	}
	if n := c.Stats().PodRereads.Load(); n != 2 {
		t.Errorf("%d pods read again, want 2", n)
	}
}

// TestMixedVersions: during a rollout, a collector of the previous
// version (which applied the condition and phase Failed to the status
// as field manager "lastgasp") and this one act on the same pod, in
// either order: the phase stays Failed and the annotations stay.
func TestMixedVersions(t *testing.T) {
	cs := client(t)
	c := start(t, cs, cleanup.Config{})
	node := makeNode(t, cs, clustertest.InternalIP("10.200.0.37"), nil)
	ns := clustertest.Unique("ns")
	pods := clustertest.Pods(t, cs, ns, node.Name, 2, clustertest.Hold)
	t.Cleanup(func() { clustertest.Release(cs, ns) })
	inc := fatal("10.200.0.37")
	ctx := context.Background()
	previous := func(p *corev1.Pod) {
		t.Helper()
		apply := corev1ac.Pod(p.Name, p.Namespace).WithUID(p.UID).WithStatus(corev1ac.PodStatus().
			WithPhase(corev1.PodFailed).
			WithConditions(corev1ac.PodCondition().WithType(corev1.DisruptionTarget).WithStatus(corev1.ConditionTrue).
				WithReason(cleanup.ConditionReasonKernelPanic).WithMessage("the node's kernel panicked: " + inc.Reason + " (incident " + inc.ID + ")").
				WithLastTransitionTime(metav1.NewTime(inc.First.Truncate(time.Second)))))
		if _, err := cs.CoreV1().Pods(p.Namespace).ApplyStatus(ctx, apply, metav1.ApplyOptions{FieldManager: "lastgasp", Force: true}); err != nil {
			t.Fatal(err)
		}
	}
	previous(pods[0]) // the previous version first, then this one
	if err := c.EndPod(ctx, pods[0], inc); err != nil {
		t.Fatal(err)
	}
	if err := c.EndPod(ctx, pods[1], inc); err != nil { // this one first
		t.Fatal(err)
	}
	previous(pods[1])
	for _, p := range pods {
		got, err := cs.CoreV1().Pods(ns).Get(ctx, p.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		clustertest.CheckPodEnded(t, got, inc, corev1.PodFailed)
	}
}

// TestDryRun: everything computed, nothing written.
func TestDryRun(t *testing.T) {
	cs := client(t)
	c := start(t, cs, cleanup.Config{DryRun: true})
	node := makeNode(t, cs, clustertest.InternalIP("10.200.0.41"), nil)
	ns, pods := makePods(t, cs, node.Name, 5)
	c.enqueue(t, fatal("10.200.0.41"), 5)
	clustertest.Eventually(t, 20*time.Second, "incident not processed", func() bool { return c.Pending() == 0 })
	n, err := cs.CoreV1().Nodes().Get(context.Background(), node.Name, metav1.GetOptions{})
	if err != nil || n.Annotations[cleanup.AnnotationIncident] != "" {
		t.Errorf("node written: %v %v", err, n.Annotations)
	}
	for _, p := range pods {
		got, err := cs.CoreV1().Pods(ns).Get(context.Background(), p.Name, metav1.GetOptions{})
		if err != nil || got.DeletionTimestamp != nil || got.ResourceVersion != p.ResourceVersion {
			t.Errorf("%s written: %v", p.Name, err)
		}
	}
	if ev := clustertest.EventsFor(t, cs, "", node.UID); len(ev) != 0 {
		t.Errorf("events recorded: %+v", ev)
	}
}

// TestAllowedSources: a source outside the allowed networks is refused.
func TestAllowedSources(t *testing.T) {
	cs := client(t)
	c := start(t, cs, cleanup.Config{AllowedSources: []netip.Prefix{netip.MustParsePrefix("10.250.0.0/16")}})
	node := makeNode(t, cs, clustertest.InternalIP("10.200.0.51"), nil)
	c.enqueue(t, fatal("10.200.0.51"), 0)
	clustertest.Eventually(t, 10*time.Second, "not refused", func() bool { return c.Stats().NotAllowed.Load() == 1 })
	if _, err := cs.CoreV1().Nodes().Get(context.Background(), node.Name, metav1.GetOptions{}); err != nil {
		t.Errorf("node: %v", err)
	}
}

// TestNodeSelector: by default a control-plane node is never ended;
// with a selector, only the nodes it selects are.
func TestNodeSelector(t *testing.T) {
	cs := client(t)
	label := func(n *corev1.Node, key, value string) {
		t.Helper()
		patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"labels": map[string]string{key: value}}})
		if _, err := cs.CoreV1().Nodes().Patch(context.Background(), n.Name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	var done outcomes
	c := start(t, cs, cleanup.Config{OnDone: done.record})
	controlPlane := makeNode(t, cs, clustertest.InternalIP("10.200.0.55"), nil)
	label(controlPlane, "node-role.kubernetes.io/control-plane", "")
	worker := makeNode(t, cs, clustertest.InternalIP("10.200.0.56"), nil)
	clustertest.Eventually(t, 10*time.Second, "cache never held the label", func() bool {
		n, _ := c.index.Node(controlPlane.Name)
		return n != nil && n.Labels != nil
	})
	cpInc, workerInc := fatal("10.200.0.55"), fatal("10.200.0.56")
	c.enqueue(t, cpInc, 0)
	c.enqueue(t, workerInc, 0)
	clustertest.Eventually(t, 20*time.Second, "worker not deleted", nodeGone(cs, worker.Name))
	clustertest.Eventually(t, 10*time.Second, "incidents not finished", func() bool { return c.Pending() == 0 })
	if _, err := cs.CoreV1().Nodes().Get(context.Background(), controlPlane.Name, metav1.GetOptions{}); err != nil {
		t.Errorf("control-plane node: %v", err)
	}
	if got := done.get()[cpInc.ID]; got != cleanup.OutcomeNotSelected || c.Stats().NotSelected.Load() != 1 {
		t.Errorf("control-plane node: outcome %q, %d not selected", got, c.Stats().NotSelected.Load())
	}

	// --node-selector pool=batch: a batch node is ended, another not.
	sel, err := labels.Parse("pool=batch")
	if err != nil {
		t.Fatal(err)
	}
	d := start(t, cs, cleanup.Config{Safety: cleanup.Safety{NodeSelector: sel}})
	batch := makeNode(t, cs, clustertest.InternalIP("10.200.0.57"), nil)
	label(batch, "pool", "batch")
	web := makeNode(t, cs, clustertest.InternalIP("10.200.0.58"), nil)
	label(web, "pool", "web")
	clustertest.Eventually(t, 10*time.Second, "cache never held the labels", func() bool {
		b, _ := d.index.Node(batch.Name)
		w, _ := d.index.Node(web.Name)
		return b != nil && w != nil && b.Labels["pool"] != "" && w.Labels["pool"] != ""
	})
	d.enqueue(t, fatal("10.200.0.58"), 0)
	d.enqueue(t, fatal("10.200.0.57"), 0)
	clustertest.Eventually(t, 20*time.Second, "batch node not deleted", nodeGone(cs, batch.Name))
	clustertest.Eventually(t, 10*time.Second, "web node not refused", func() bool { return d.Stats().NotSelected.Load() == 1 })
	if _, err := cs.CoreV1().Nodes().Get(context.Background(), web.Name, metav1.GetOptions{}); err != nil {
		t.Errorf("web node: %v", err)
	}
}

// TestDeletionCap: with a cap of 2 a minute, 4 panics at once delete 2
// nodes now, and the other 2 wait their turn (counted).
func TestDeletionCap(t *testing.T) {
	cs := client(t)
	c := start(t, cs, cleanup.Config{MaxNodeDeletionsPerMinute: 2})
	var nodes []*corev1.Node
	for i := range 4 {
		addr := fmt.Sprintf("10.200.0.6%d", i)
		nodes = append(nodes, makeNode(t, cs, clustertest.InternalIP(addr), nil))
	}
	for i := range 4 {
		c.enqueue(t, fatal(fmt.Sprintf("10.200.0.6%d", i)), 0)
	}
	clustertest.Eventually(t, 20*time.Second, "two nodes not deleted", func() bool { return c.Stats().NodesDeleted.Load() == 2 })
	clustertest.Eventually(t, 5*time.Second, "cap not counted", func() bool { return c.Stats().Capped.Load() == 2 })
	time.Sleep(2 * time.Second) // the cap's next turn is 30 s away: nothing more happens meanwhile
	left := 0
	for _, n := range nodes {
		if _, err := cs.CoreV1().Nodes().Get(context.Background(), n.Name, metav1.GetOptions{}); err == nil {
			left++
		}
	}
	if left != 2 || c.Stats().NodesDeleted.Load() != 2 || c.Pending() != 2 {
		t.Errorf("%d nodes left, %d deleted, %d pending; want 2, 2, 2", left, c.Stats().NodesDeleted.Load(), c.Pending())
	}
}

// TestSharedCap: two collectors sharing one brake Lease, with a cap of 2
// a minute, hear 4 panics of 4 nodes (2 each): 2 nodes are ended between
// them, the other 2 wait. A third collector started afterwards (a
// restart) finds the cap used up too.
func TestSharedCap(t *testing.T) {
	cs := client(t)
	lease := clustertest.Unique("brake")
	cfg := cleanup.Config{MaxNodeDeletionsPerMinute: 2, Safety: cleanup.Safety{BrakeLeaseNamespace: metav1.NamespaceDefault, BrakeLeaseName: lease}}
	a, b := start(t, cs, cfg), start(t, cs, cfg)
	var nodes []*corev1.Node
	for i := range 5 {
		nodes = append(nodes, makeNode(t, cs, clustertest.InternalIP(fmt.Sprintf("10.200.0.4%d", i)), nil))
	}
	for i := range 4 {
		c := []*collector{a, b}[i%2]
		c.enqueue(t, fatal(fmt.Sprintf("10.200.0.4%d", i)), 0)
	}
	deleted := func() uint64 { return a.Stats().NodesDeleted.Load() + b.Stats().NodesDeleted.Load() }
	clustertest.Eventually(t, 20*time.Second, "two nodes not deleted", func() bool { return deleted() == 2 })
	clustertest.Eventually(t, 10*time.Second, "cap not counted", func() bool { return a.Stats().Capped.Load()+b.Stats().Capped.Load() == 2 })
	restarted := start(t, cs, cfg)
	restarted.enqueue(t, fatal("10.200.0.44"), 0)
	clustertest.Eventually(t, 10*time.Second, "the restarted collector ignored the cap", func() bool { return restarted.Stats().Capped.Load() == 1 })
	time.Sleep(2 * time.Second) // the cap's next turn is a minute away: nothing more happens meanwhile
	left := 0
	for _, n := range nodes {
		if _, err := cs.CoreV1().Nodes().Get(context.Background(), n.Name, metav1.GetOptions{}); err == nil {
			left++
		}
	}
	if left != 3 || deleted()+restarted.Stats().NodesDeleted.Load() != 2 {
		t.Errorf("%d nodes left, %d deleted; want 3, 2", left, deleted()+restarted.Stats().NodesDeleted.Load())
	}
	l, err := cs.CoordinationV1().Leases(metav1.NamespaceDefault).Get(context.Background(), lease, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("brake lease: %s", l.Annotations[cleanup.AnnotationRecentEnds])
}

// TestShareBrake: with a share that lets 2 of the cluster's nodes be
// ended in the window, a third panic is not acted on: finished
// unconfirmed, counted, the node annotated, an Event.
func TestShareBrake(t *testing.T) {
	cs := client(t)
	var nodes []*corev1.Node
	for i := range 3 {
		nodes = append(nodes, makeNode(t, cs, clustertest.InternalIP(fmt.Sprintf("10.200.0.5%d", i+7)), nil))
	}
	all, err := cs.CoreV1().Nodes().List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// Ended 1 of N: not over; 2 of N: over.
	share := 1.5 / float64(len(all.Items))
	var done outcomes
	c := start(t, cs, cleanup.Config{Safety: cleanup.Safety{MaxEndedShare: share}, OnDone: done.record})
	for i := range 3 {
		c.enqueue(t, fatal(fmt.Sprintf("10.200.0.5%d", i+7)), 0)
	}
	clustertest.Eventually(t, 20*time.Second, "incidents not finished", func() bool { return c.Pending() == 0 })
	outcomes := map[cleanup.Outcome]int{}
	for _, o := range done.get() {
		outcomes[o]++
	}
	if outcomes[cleanup.OutcomeCleanedUp] != 2 || outcomes[cleanup.OutcomeBraked] != 1 || c.Stats().Braked.Load() != 1 {
		t.Fatalf("outcomes %v, %d braked; want 2 cleaned up, 1 braked", outcomes, c.Stats().Braked.Load())
	}
	for _, n := range nodes {
		got, err := cs.CoreV1().Nodes().Get(context.Background(), n.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			continue
		}
		checkSpared(t, cs, got, "", nil)
	}
}

// TestAPIServerOutage: the API server becomes unreachable mid-cleanup
// (every connection cut, new ones refused, through a proxy in front of
// it); the incident is retried with backoff and applied once it is back.
func TestAPIServerOutage(t *testing.T) {
	cs := client(t)
	proxy, err := cp.NewProxy()
	if err != nil {
		t.Fatal(err)
	}
	defer proxy.Close()
	through, err := kubernetes.NewForConfig(proxy.Config(cp.Config))
	if err != nil {
		t.Fatal(err)
	}
	c := start(t, through, cleanup.Config{})
	node := makeNode(t, cs, clustertest.InternalIP("10.200.0.71"), nil)
	makePods(t, cs, node.Name, 30)
	clustertest.Eventually(t, 10*time.Second, "cache never held the pods", func() bool {
		got, _ := c.index.PodsOn(node.Name)
		return len(got) == 30
	})

	proxy.Cut()
	c.Enqueue(fatal("10.200.0.71"))
	clustertest.Eventually(t, 20*time.Second, "no failed attempt during the outage", func() bool { return c.Stats().APIErrors.Load() >= 3 })
	if _, err := cs.CoreV1().Nodes().Get(context.Background(), node.Name, metav1.GetOptions{}); err != nil {
		t.Fatalf("node gone during the outage: %v", err)
	}
	if err := proxy.Restore(); err != nil {
		t.Fatal(err)
	}
	clustertest.Eventually(t, 30*time.Second, "node not deleted after the outage", nodeGone(cs, node.Name))
	if c.Stats().PodsDeleted.Load() != 30 {
		t.Errorf("%d pods deleted, want 30", c.Stats().PodsDeleted.Load())
	}
	t.Logf("%d attempts failed during the outage", c.Stats().APIErrors.Load())
}

// prober probes from the collector's namespace of pair, with short
// windows.
func prober(cs kubernetes.Interface, pair *testnet.Pair) *liveness.Prober {
	return &liveness.Prober{
		Client:      cs,
		Window:      1500 * time.Millisecond,
		Attempt:     500 * time.Millisecond,
		LeaseMargin: 500 * time.Millisecond,
		Do:          pair.Collector.Netns.Do,
	}
}

// checkSpared checks that node was not deleted, was marked unconfirmed
// with one Event, and that its pods were not touched.
func checkSpared(t *testing.T, cs kubernetes.Interface, n *corev1.Node, ns string, pods []*corev1.Pod) {
	t.Helper()
	got, err := cs.CoreV1().Nodes().Get(context.Background(), n.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("%s deleted: %v", n.Name, err)
	}
	if got.Annotations[cleanup.AnnotationUnconfirmed] == "" || got.Annotations[cleanup.AnnotationIncident] != "" {
		t.Errorf("%s annotations %v", n.Name, got.Annotations)
	}
	if ev := clustertest.EventsFor(t, cs, "", n.UID); len(ev) == 0 || ev[0].Reason != cleanup.EventReasonKernelPanicUnconfirmed {
		t.Errorf("%s events %+v", n.Name, ev)
	}
	t.Logf("%s: %s", n.Name, got.Annotations[cleanup.AnnotationUnconfirmedEvidence])
	for _, p := range pods {
		got, err := cs.CoreV1().Pods(ns).Get(context.Background(), p.Name, metav1.GetOptions{})
		if err != nil || got.DeletionTimestamp != nil || got.Status.Phase != p.Status.Phase || got.Annotations[cleanup.AnnotationIncident] != "" {
			t.Errorf("pod %s on the live node %s touched", p.Name, n.Name)
		}
	}
}

// TestSpoofedPanic: the node answers on its kubelet port, or its kubelet
// renews its Lease (on a clock far behind) while its port is silent:
// nothing is deleted, the node is marked, the refusal counted. A node
// that answers nothing and whose Lease stays as it was is deleted.
func TestSpoofedPanic(t *testing.T) {
	testnet.RequireRoot(t)
	cs := client(t)
	pair := testnet.NewPair(t)
	pair.Node.Netns.AnswerTCP(t, pair.Node.IPv4, 10250) // the live node's kubelet
	c := start(t, cs, cleanup.Config{Prober: prober(cs, pair)})

	// Addresses in the collector's subnet that nobody holds: ARP goes
	// unanswered, as for a panicked kernel.
	deadAddr := pair.Node.IPv4.Next()
	live := makeNode(t, cs, clustertest.InternalIP(pair.Node.IPv4.String()), nil)
	leased := makeNode(t, cs, clustertest.InternalIP(deadAddr.Next().String()), nil)
	dead := makeNode(t, cs, clustertest.InternalIP(deadAddr.String()), nil)
	ns, pods := makePods(t, cs, live.Name, 2)
	// The leased node's kubelet renews its Lease, on a clock a minute
	// behind (its renewTime is always before the "panic").
	clustertest.Kubelet(t, cs, leased.Name, -time.Minute)

	c.enqueue(t, fatal(pair.Node.IPv4.String()), 2)
	c.enqueue(t, fatal(deadAddr.Next().String()), 0)
	c.enqueue(t, fatal(deadAddr.String()), 0)

	clustertest.Eventually(t, 30*time.Second, "dead node not deleted", nodeGone(cs, dead.Name))
	clustertest.Eventually(t, 30*time.Second, "refusals not counted", func() bool { return c.Stats().Unconfirmed.Load() == 2 })
	checkSpared(t, cs, live, ns, pods)
	checkSpared(t, cs, leased, "", nil)
	out, _ := json.Marshal(map[string]uint64{"unconfirmed": c.Stats().Unconfirmed.Load(), "nodes_deleted": c.Stats().NodesDeleted.Load()})
	t.Logf("stats %s", out)
}

// TestForgedPanicsNeverEndALiveNode: a live node whose kubelet port is
// silently dropped between it and the collector (the common production
// layout), its kubelet renewing its Lease every second (leaseDurationSeconds
// 4) on a clock 30 s behind. 200 forged panics: none ends the node or a
// pod; every one is refused as alive. (Before the Lease was judged on the
// collector's clock, a renewTime behind the panic's time made it dead.)
func TestForgedPanicsNeverEndALiveNode(t *testing.T) {
	testnet.RequireRoot(t)
	cs := client(t)
	pair := testnet.NewPair(t)
	pair.Node.Netns.DropTCP(t, 10250)
	var done outcomes
	// No forgery backoff here: every forgery is confirmed (see
	// TestForgeriesCostTheForger).
	c := startWorkers(t, cs, cleanup.Config{Prober: prober(cs, pair), OnDone: done.record, Safety: cleanup.Safety{ForgeryBackoff: time.Nanosecond, ForgeryBackoffMax: time.Nanosecond}}, 16)
	live := makeNode(t, cs, clustertest.InternalIP(pair.Node.IPv4.String()), nil)
	ns, pods := makePods(t, cs, live.Name, 3)
	clustertest.Kubelet(t, cs, live.Name, -30*time.Second)

	const forgeries = 200
	for i := range forgeries {
		inc := fatal(pair.Node.IPv4.String())
		inc.ID = fmt.Sprintf("forged%04d%s", i, inc.ID[10:])
		c.enqueue(t, inc, 3)
	}
	clustertest.Eventually(t, 3*time.Minute, "forgeries not all finished", func() bool { return c.Pending() == 0 })
	outcomes := map[cleanup.Outcome]int{}
	for _, o := range done.get() {
		outcomes[o]++
	}
	if outcomes[cleanup.OutcomeUnconfirmed] != forgeries || c.Stats().NodesDeleted.Load() != 0 || c.Stats().PodsDeleted.Load() != 0 {
		t.Errorf("outcomes %v, %d nodes and %d pods deleted; want %d refused, none deleted", outcomes, c.Stats().NodesDeleted.Load(), c.Stats().PodsDeleted.Load(), forgeries)
	}
	checkSpared(t, cs, live, ns, pods)
}

// TestForgeriesCostTheForger: after a panic refused because the node
// answered, the next one about that node waits ForgeryBackoff, the one
// after twice as long; each wait is counted once. (The refusals are timed
// when finished, after their annotation and Event, while the backoff
// starts before them: 10% of slack.)
func TestForgeriesCostTheForger(t *testing.T) {
	testnet.RequireRoot(t)
	cs := client(t)
	pair := testnet.NewPair(t)
	pair.Node.Netns.AnswerTCP(t, pair.Node.IPv4, 10250)
	var mu sync.Mutex
	var at []time.Time
	c := start(t, cs, cleanup.Config{Prober: prober(cs, pair), Safety: cleanup.Safety{ForgeryBackoff: 3 * time.Second, ForgeryBackoffMax: time.Minute},
		OnDone: func(_ detect.Incident, o cleanup.Outcome, _ string, when time.Time) {
			mu.Lock()
			defer mu.Unlock()
			if o == cleanup.OutcomeUnconfirmed {
				at = append(at, when)
			}
		}})
	makeNode(t, cs, clustertest.InternalIP(pair.Node.IPv4.String()), nil)
	refused := func() int { mu.Lock(); defer mu.Unlock(); return len(at) }
	for i := range 3 {
		c.enqueue(t, fatal(pair.Node.IPv4.String()), 0)
		clustertest.Eventually(t, 30*time.Second, "not refused", func() bool { return refused() == i+1 })
	}
	mu.Lock()
	defer mu.Unlock()
	if first, second := at[1].Sub(at[0]), at[2].Sub(at[1]); first < 2700*time.Millisecond || second < 5400*time.Millisecond {
		t.Errorf("refusals %v then %v apart; want about 3s, then 6s", first, second)
	}
	if n := c.Stats().ForgeryDelayed.Load(); n != 2 {
		t.Errorf("%d delays counted, want 2", n)
	}
}

// TestNoLeaseIsUndecided: a node whose kubelet port is silent but that
// has no Lease (deleted) cannot be told dead: the incident is tried again
// for UndecidedFor, then finished as unconfirmed (the node annotated, an
// Event), nothing deleted, no API error counted.
func TestNoLeaseIsUndecided(t *testing.T) {
	testnet.RequireRoot(t)
	cs := client(t)
	pair := testnet.NewPair(t)
	var done outcomes
	c := start(t, cs, cleanup.Config{Prober: prober(cs, pair), OnDone: done.record, Safety: cleanup.Safety{UndecidedFor: 4 * time.Second}})
	addr := pair.Node.IPv4.Next() // nobody's: silent, as a dead node
	node := makeNode(t, cs, clustertest.InternalIP(addr.String()), nil)
	ns, pods := makePods(t, cs, node.Name, 2)
	if err := cs.CoordinationV1().Leases(corev1.NamespaceNodeLease).Delete(context.Background(), node.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	inc := fatal(addr.String())
	c.enqueue(t, inc, 2)
	clustertest.Eventually(t, 30*time.Second, "incident not finished", func() bool { return c.Pending() == 0 })
	if got := done.get()[inc.ID]; got != cleanup.OutcomeUndecided {
		t.Errorf("outcome %q, want %q", got, cleanup.OutcomeUndecided)
	}
	s := c.Stats()
	if s.Undecided.Load() != 1 || s.UndecidedRetries.Load() == 0 || s.APIErrors.Load() != 0 || s.Unconfirmed.Load() != 0 {
		t.Errorf("stats: %d undecided, %d retries, %d API errors, %d refused", s.Undecided.Load(), s.UndecidedRetries.Load(), s.APIErrors.Load(), s.Unconfirmed.Load())
	}
	checkSpared(t, cs, node, ns, pods)
}

// TestJobPodFailurePolicy proves the user-facing point with a real job
// controller (kube-controller-manager): a Job whose podFailurePolicy
// ignores DisruptionTarget, with its pod on the panicked node, gets a
// replacement pod and no failure counted against its backoffLimit.
func TestJobPodFailurePolicy(t *testing.T) {
	cs := client(t)
	stop, err := cp.StartControllerManager(context.Background(), "job")
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	c := start(t, cs, cleanup.Config{})
	node := makeNode(t, cs, clustertest.InternalIP("10.200.0.81"), nil)
	ns := clustertest.Unique("ns")
	ctx := context.Background()
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	zero := int32(0)
	job, err := cs.BatchV1().Jobs(ns).Create(ctx, &batchv1.Job{
		ObjectMeta: metav1.ObjectMeta{Name: "batch"},
		Spec: batchv1.JobSpec{
			BackoffLimit: &zero, // a counted failure would fail the Job at once
			PodFailurePolicy: &batchv1.PodFailurePolicy{Rules: []batchv1.PodFailurePolicyRule{{
				Action:          batchv1.PodFailurePolicyActionIgnore,
				OnPodConditions: []batchv1.PodFailurePolicyOnPodConditionsPattern{{Type: corev1.DisruptionTarget, Status: corev1.ConditionTrue}},
			}}},
			Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{
				NodeName:      node.Name, // no scheduler here: bound from the start
				RestartPolicy: corev1.RestartPolicyNever,
				Containers:    []corev1.Container{{Name: "work", Image: "busybox"}},
			}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var first corev1.Pod
	clustertest.Eventually(t, 30*time.Second, "the job controller made no pod", func() bool {
		pods, _ := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		if len(pods.Items) == 1 {
			first = pods.Items[0]
		}
		return len(pods.Items) == 1
	})
	c.enqueue(t, fatal("10.200.0.81"), 1)
	clustertest.Eventually(t, 30*time.Second, "node not deleted", nodeGone(cs, node.Name))
	clustertest.Eventually(t, 60*time.Second, "no replacement pod", func() bool {
		pods, _ := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		for _, p := range pods.Items {
			if p.UID != first.UID && p.DeletionTimestamp == nil {
				return true
			}
		}
		return false
	})
	got, err := cs.BatchV1().Jobs(ns).Get(ctx, job.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, cond := range got.Status.Conditions {
		if cond.Type == batchv1.JobFailed && cond.Status == corev1.ConditionTrue {
			t.Errorf("the job failed: %s: %s", cond.Reason, cond.Message)
		}
	}
	if got.Status.Failed != 0 {
		t.Errorf("the job counted %d failures, want 0", got.Status.Failed)
	}
	t.Logf("job status: active %d, failed %d", got.Status.Active, got.Status.Failed)
	cs.BatchV1().Jobs(ns).Delete(ctx, job.Name, metav1.DeleteOptions{})
}

// TestActionsConfigurable: pods failed but not deleted, the Node
// annotated but kept; and pods untouched.
func TestActionsConfigurable(t *testing.T) {
	cs := client(t)
	c := start(t, cs, cleanup.Config{PodAction: cleanup.PodsFail, KeepNode: true})
	node := makeNode(t, cs, clustertest.InternalIP("10.200.0.91"), nil)
	ns, pods := makePods(t, cs, node.Name, 3)
	inc := fatal("10.200.0.91")
	c.enqueue(t, inc, 3)
	clustertest.Eventually(t, 20*time.Second, "node not annotated", func() bool {
		n, err := cs.CoreV1().Nodes().Get(context.Background(), node.Name, metav1.GetOptions{})
		return err == nil && n.Annotations[cleanup.AnnotationIncident] == inc.ID
	})
	clustertest.Eventually(t, 10*time.Second, "incident not done", func() bool { return c.Pending() == 0 })
	for _, p := range pods {
		got, err := cs.CoreV1().Pods(ns).Get(context.Background(), p.Name, metav1.GetOptions{})
		if err != nil || got.DeletionTimestamp != nil || got.Annotations[cleanup.AnnotationIncident] != inc.ID {
			t.Errorf("%s: want failed and annotated, not deleted: %v %+v", p.Name, err, got.ObjectMeta)
		}
		want := corev1.PodFailed
		if p.Name == "pod-0" {
			want = corev1.PodSucceeded
		}
		if got.Status.Phase != want {
			t.Errorf("%s: phase %s, want %s", p.Name, got.Status.Phase, want)
		}
	}

	d := start(t, cs, cleanup.Config{PodAction: cleanup.PodsNone})
	other := makeNode(t, cs, clustertest.InternalIP("10.200.0.92"), nil)
	ns2, pods2 := makePods(t, cs, other.Name, 2)
	d.enqueue(t, fatal("10.200.0.92"), 2)
	clustertest.Eventually(t, 20*time.Second, "node not deleted", nodeGone(cs, other.Name))
	for _, p := range pods2 {
		got, err := cs.CoreV1().Pods(ns2).Get(context.Background(), p.Name, metav1.GetOptions{})
		if err != nil || got.ResourceVersion != p.ResourceVersion {
			t.Errorf("%s touched: %v", p.Name, err)
		}
	}
	if _, err := cleanup.ParsePodAction("evict"); err == nil {
		t.Error("ParsePodAction accepted evict")
	}
}

// TestOneDeathOneID: two collectors heard one node's death under two ids
// (one lost the trigger the other's id is made of). The first ends the
// node's pods (here it fails them and keeps them, and the Node, so the
// second finds them); the second, seeing pods ended by the first within
// the window, writes under the first's id: one set of annotations and
// one Event a pod and for the Node, not two.
func TestOneDeathOneID(t *testing.T) {
	cs := client(t)
	cfg := cleanup.Config{PodAction: cleanup.PodsFail, KeepNode: true}
	cfg.Instance = "collector-a"
	a := start(t, cs, cfg)
	cfg.Instance = "collector-b"
	b := start(t, cs, cfg)
	node := makeNode(t, cs, clustertest.InternalIP("10.200.0.39"), nil)
	ns, _ := makePods(t, cs, node.Name, 5)
	first, second := fatal("10.200.0.39"), fatal("10.200.0.39")
	second.Reason = "Kernel panic - not syncing: Fatal exception in interrupt"
	a.enqueue(t, first, 5)
	clustertest.Eventually(t, 30*time.Second, "the first collector never finished", func() bool { return a.Pending() == 0 })
	// The second's cache must hold the pods as the first left them.
	clustertest.Eventually(t, 10*time.Second, "the second collector's cache never saw the pods ended", func() bool {
		pods, _ := b.index.PodsOn(node.Name)
		for _, p := range pods {
			if p.Annotations[cleanup.AnnotationIncident] == "" && p.Status.Phase != corev1.PodSucceeded {
				return false
			}
		}
		return len(pods) == 5
	})
	b.enqueue(t, second, 5)
	clustertest.Eventually(t, 30*time.Second, "the second collector never finished", func() bool { return b.Pending() == 0 })

	pods, err := cs.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pods.Items {
		if id := p.Annotations[cleanup.AnnotationIncident]; id != first.ID {
			t.Errorf("%s: incident %q, want the first's %q", p.Name, id, first.ID)
		}
		if ev := clustertest.EventsFor(t, cs, ns, p.UID); len(ev) != 1 {
			t.Errorf("%s: %d events, want 1", p.Name, len(ev))
		}
	}
	n, err := cs.CoreV1().Nodes().Get(context.Background(), node.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if id := n.Annotations[cleanup.AnnotationIncident]; id != first.ID {
		t.Errorf("node: incident %q, want the first's %q", id, first.ID)
	}
	if ev := clustertest.EventsFor(t, cs, "", node.UID); len(ev) != 1 {
		t.Errorf("node: %d events, want 1", len(ev))
	}
}

// TestPermanentErrorFinishes: an action the API server refuses for good
// (here every write is Forbidden: the controller's client is a user with
// no rights) finishes the incident as failed, counted, instead of being
// retried forever as an API error.
func TestPermanentErrorFinishes(t *testing.T) {
	cs := client(t)
	nobodyCfg := rest.CopyConfig(cp.Config)
	nobodyCfg.Impersonate = rest.ImpersonationConfig{UserName: "lastgasp-test-nobody"}
	nobody, err := kubernetes.NewForConfig(nobodyCfg)
	if err != nil {
		t.Fatal(err)
	}
	var done outcomes
	c := start(t, cs, cleanup.Config{Client: nobody, OnDone: done.record})
	node := makeNode(t, cs, clustertest.InternalIP("10.200.0.41"), nil)
	makePods(t, cs, node.Name, 3)
	inc := fatal("10.200.0.41")
	c.enqueue(t, inc, 3)
	clustertest.Eventually(t, 30*time.Second, "the incident never finished", func() bool { return done.get()[inc.ID] != "" })
	if got := done.get()[inc.ID]; got != cleanup.OutcomeFailed {
		t.Errorf("outcome %q, want %q", got, cleanup.OutcomeFailed)
	}
	if s := c.Stats(); s.Failed.Load() != 1 || s.APIErrors.Load() != 0 {
		t.Errorf("stats: %d failed, %d API errors", s.Failed.Load(), s.APIErrors.Load())
	}
	if _, err := cs.CoreV1().Nodes().Get(context.Background(), node.Name, metav1.GetOptions{}); err != nil {
		t.Errorf("the node: %v", err)
	}
}

// TestCacheHoldsNoManagedFields: the collector caches every Node and Pod
// of the cluster; their managedFields, which nothing reads, are dropped
// before they are cached.
func TestCacheHoldsNoManagedFields(t *testing.T) {
	cs := client(t)
	c := start(t, cs, cleanup.Config{})
	node := makeNode(t, cs, clustertest.InternalIP("10.200.0.43"), nil)
	ns, _ := makePods(t, cs, node.Name, 2)
	stored, err := cs.CoreV1().Pods(ns).Get(context.Background(), "pod-1", metav1.GetOptions{})
	if err != nil || len(stored.ManagedFields) == 0 {
		t.Fatalf("the API server's pod has no managedFields to drop (%v)", err)
	}
	clustertest.Eventually(t, 10*time.Second, "the cache never held the pods", func() bool {
		pods, _ := c.index.PodsOn(node.Name)
		return len(pods) == 2
	})
	pods, _ := c.index.PodsOn(node.Name)
	cached, _ := c.index.Node(node.Name)
	for _, p := range pods {
		if len(p.ManagedFields) != 0 {
			t.Errorf("cached pod %s holds %d managedFields entries", p.Name, len(p.ManagedFields))
		}
	}
	if cached == nil || len(cached.ManagedFields) != 0 {
		t.Errorf("cached node: %v", cached)
	}
}
