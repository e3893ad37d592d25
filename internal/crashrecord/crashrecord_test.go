package crashrecord_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"

	"github.com/lastgasp/lastgasp/internal/cleanup"
	"github.com/lastgasp/lastgasp/internal/crashrecord"
	"github.com/lastgasp/lastgasp/internal/detect"
	"github.com/lastgasp/lastgasp/internal/nodeindex"
	"github.com/lastgasp/lastgasp/internal/pattern"
	"github.com/lastgasp/lastgasp/internal/testrig/clustertest"
	"github.com/lastgasp/lastgasp/internal/testrig/controlplane"
)

// cp is the control plane every test shares, with the CRD of
// deploy/kernelcrash-crd.yaml installed.
var cp *controlplane.ControlPlane

func TestMain(m *testing.M) {
	controlplane.TestMain(m, "crashrecord", &cp, (*controlplane.ControlPlane).InstallKernelCrashCRD)
}

func clients(t *testing.T) (*kubernetes.Clientset, *crashrecord.Store, dynamic.Interface) {
	t.Helper()
	cs, err := cp.Client()
	if err != nil {
		t.Fatal(err)
	}
	dyn, err := dynamic.NewForConfig(cp.Config)
	if err != nil {
		t.Fatal(err)
	}
	return cs, crashrecord.NewStore(dyn), dyn
}

// collector is a cleanup controller that records, with its own caches
// and its own Store, as a separate collector has; stop ends it.
type collector struct {
	*cleanup.Controller
	index *nodeindex.Index
	stop  func()
}

// startCollector starts a collector named name; each of opts may change
// its cleanup.Config.
func startCollector(t *testing.T, name string, opts ...func(*cleanup.Config)) *collector {
	t.Helper()
	cs, store, _ := clients(t)
	ctx, cancel := context.WithCancel(context.Background())
	factory := informers.NewSharedInformerFactory(cs, 0)
	index, err := nodeindex.New(factory)
	if err != nil {
		t.Fatal(err)
	}
	rec := &crashrecord.Recorder{Store: store, Instance: name}
	cfg := cleanup.Config{Client: cs, Index: index, Instance: name, Record: rec.Record, Safety: cleanup.Safety{MaxEndedShare: 1}}
	for _, o := range opts {
		o(&cfg)
	}
	c := cleanup.New(cfg)
	factory.Start(ctx.Done())
	done := make(chan struct{})
	go func() { defer close(done); c.Run(ctx, 4) }()
	stop := func() { cancel(); <-done; factory.Shutdown() }
	t.Cleanup(func() {
		if ctx.Err() == nil {
			stop()
		}
	})
	if err := index.WaitForSync(ctx); err != nil {
		t.Fatal(err)
	}
	return &collector{Controller: c, index: index, stop: stop}
}

// waitFor waits until the collector's cache holds the node of src and
// its n pods.
func (c *collector) waitFor(t *testing.T, src netip.Addr, n int) {
	t.Helper()
	clustertest.Eventually(t, 10*time.Second, "cache never held the node of "+src.String(), func() bool {
		node, _, _ := c.index.NodeFor(src)
		if node == nil {
			return false
		}
		pods, _ := c.index.PodsOn(node.Name)
		for _, p := range pods {
			if len(p.OwnerReferences) == 0 && p.Name != "pod-0" {
				return false
			}
		}
		return len(pods) == n
	})
}

// nullPanic is a fatal incident as the detector makes it of
// testdata/kernel/null-panic-basic-v4 (lines shortened).
func nullPanic(src string) detect.Incident {
	return detect.Incident{
		ID:     clustertest.Unique("inc")[4:] + "0123456789",
		Source: netip.MustParseAddr(src),
		Kind:   pattern.KindOops, Fatal: true,
		Reason: "Kernel panic - not syncing: Fatal exception",
		Cause:  "BUG: kernel NULL pointer dereference, address: 0000000000000000",
		Module: "crashmod", Task: "insmod", PID: 104,
		First: time.Now().Add(-time.Second), Last: time.Now(),
		Lines: []string{
			"[    3.763251] BUG: kernel NULL pointer dereference, address: 0000000000000000",
			"[    3.765806] CPU: 0 PID: 104 Comm: insmod Tainted: G           OE      6.1.0-56-amd64 #1  Debian 6.1.192-2",
			"[    3.771621] RIP: 0010:crashmod_init+0x58/0x1000 [crashmod]",
			"[    3.775775] Call Trace:",
			"[    3.777775]  <TASK>",
			"[    3.778962]  ? 0xffffffffc04d8000",
			"[    3.779221]  do_one_initcall+0x59/0x220",
			"[    3.779485]  do_init_module+0x4a/0x1f0",
			"[    3.786363]  </TASK>",
			"[    3.799999] Kernel panic - not syncing: Fatal exception",
		},
	}
}

// TestTwoCollectorsOneRecord: two collectors hear one panic; one record
// is written, with what was done, and it outlives the node, the pods
// and both collectors.
func TestTwoCollectorsOneRecord(t *testing.T) {
	cs, store, _ := clients(t)
	a, b := startCollector(t, "collector-a"), startCollector(t, "collector-b")
	node := clustertest.Node(t, cs, clustertest.Unique("node"), clustertest.InternalIP("10.210.0.11"), nil)
	ns := clustertest.Unique("ns")
	pods := clustertest.Pods(t, cs, ns, node.Name, 3, clustertest.Hold)
	owners := clustertest.Owners(t, cs, ns)
	clustertest.Own(t, cs, pods[1], owners["Job"])
	clustertest.Own(t, cs, pods[2], owners["StatefulSet"])
	inc := nullPanic("10.210.0.11")
	for _, c := range []*collector{a, b} {
		c.waitFor(t, inc.Source, 3)
	}
	a.Enqueue(inc)
	b.Enqueue(inc)
	clustertest.Eventually(t, 30*time.Second, "work left", func() bool { return a.Pending() == 0 && b.Pending() == 0 })

	// The node, the pods and both collectors go.
	clustertest.Release(cs, ns)
	clustertest.Eventually(t, 30*time.Second, "pods not gone", func() bool {
		list, err := cs.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{})
		return err == nil && len(list.Items) == 0
	})
	if _, err := cs.CoreV1().Nodes().Get(context.Background(), node.Name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("node not deleted: %v", err)
	}
	a.stop()
	b.stop()

	// A fresh client, as a collector restarted, or lastgasp history.
	_, store, _ = clients(t)
	all, err := store.List(context.Background(), crashrecord.LabelNode+"="+node.Name)
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 1 {
		t.Fatalf("%d records of node %s, want 1", len(all), node.Name)
	}
	kc := all[0]
	s := kc.Spec
	if kc.Name != inc.ID || s.Incident != inc.ID || s.Node.Name != node.Name || s.Node.UID != node.UID || s.Source != "10.210.0.11" ||
		s.Kind != "oops" || !s.Fatal || s.Reason != inc.Reason || s.Cause != inc.Cause || s.Module != "crashmod" || s.Task != "insmod" ||
		s.KernelRelease != "6.1.0-56-amd64" || len(s.Lines) != len(inc.Lines) || s.Outcome != string(cleanup.OutcomeCleanedUp) ||
		s.NodeDeletedAt == nil || s.ConfirmedDeadAt != nil || s.PodCount != 3 || s.Storm ||
		(s.ReportedBy != "collector-a" && s.ReportedBy != "collector-b") {
		t.Errorf("record %+v", s)
	}
	if len(s.Signature.ID) != 16 || !strings.HasSuffix(s.Signature.Title, " in crashmod_init") || kc.Labels[crashrecord.LabelSignature] != s.Signature.ID {
		t.Errorf("signature %+v, labels %v", s.Signature, kc.Labels)
	}
	owned := map[string]string{}
	for _, p := range s.Pods {
		owned[p.Namespace+"/"+p.Name] = p.OwnerKind + "/" + p.OwnerName
	}
	if owned[ns+"/pod-0"] != "/" || owned[ns+"/pod-1"] != "Job/job" || owned[ns+"/pod-2"] != "StatefulSet/sts" {
		t.Errorf("pods %v", owned)
	}
}

// TestNotFatalRecorded: an incident that ended nothing is recorded too,
// with its outcome; one about no node is not (a forgery flood would
// fill etcd).
func TestNotFatalRecorded(t *testing.T) {
	cs, store, _ := clients(t)
	c := startCollector(t, "collector-c")
	node := clustertest.Node(t, cs, clustertest.Unique("node"), clustertest.InternalIP("10.210.0.12"), nil)
	t.Cleanup(func() { cs.CoreV1().Nodes().Delete(context.Background(), node.Name, metav1.DeleteOptions{}) })
	warn := nullPanic("10.210.0.12")
	warn.Fatal, warn.Kind, warn.Reason = false, pattern.KindWarning, warn.Cause
	nobody := nullPanic("10.210.9.9")
	c.waitFor(t, warn.Source, 0)
	c.Enqueue(warn)
	c.Enqueue(nobody)
	clustertest.Eventually(t, 30*time.Second, "work left", func() bool { return c.Pending() == 0 })
	kc, err := store.Get(context.Background(), warn.ID)
	if err != nil || kc.Spec.Outcome != string(cleanup.OutcomeReported) || kc.Spec.Fatal || kc.Spec.NodeDeletedAt != nil {
		t.Errorf("record %+v: %v", kc, err)
	}
	if _, err := store.Get(context.Background(), nobody.ID); !apierrors.IsNotFound(err) {
		t.Errorf("a record of an incident about no node: %v", err)
	}
}

// TestKilledAfterNodeDeleted: a collector dies after the Node's deletion,
// before its record is final (here: its final write never returns until
// it is stopped, the work of a SIGKILL at that instant, as the journal
// leaves the incident unfinished); the record it wrote before ending
// anything is there, pending, and the collector that resumes the
// incident, which finds no Node any more, makes it final, the pods
// ended and all. (Without the pending record, that incident had no
// record at all.)
func TestKilledAfterNodeDeleted(t *testing.T) {
	cs, store, _ := clients(t)
	ctx := context.Background()
	dying := make(chan struct{})
	var once sync.Once
	a := startCollector(t, "collector-killed", func(cfg *cleanup.Config) {
		record := cfg.Record
		cfg.Record = func(ctx context.Context, f cleanup.Finished) error {
			if crashrecord.Pending(string(f.Outcome)) {
				return record(ctx, f)
			}
			once.Do(func() { close(dying) })
			<-ctx.Done() // dies here
			return ctx.Err()
		}
	})
	node := clustertest.Node(t, cs, clustertest.Unique("node"), clustertest.InternalIP("10.210.0.14"), nil)
	ns := clustertest.Unique("ns")
	pods := clustertest.Pods(t, cs, ns, node.Name, 2)
	clustertest.Own(t, cs, pods[1], clustertest.Owners(t, cs, ns)["Job"])
	inc := nullPanic("10.210.0.14")
	a.waitFor(t, inc.Source, 2)
	a.Enqueue(inc)
	select {
	case <-dying:
	case <-time.After(30 * time.Second):
		t.Fatal("the incident was never finished")
	}
	if _, err := cs.CoreV1().Nodes().Get(ctx, node.Name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("node not deleted: %v", err)
	}
	a.stop()
	kc, err := store.Get(ctx, inc.ID)
	if err != nil || kc.Spec.Outcome != cleanup.OutcomePending+string(cleanup.OutcomeCleanedUp) || kc.Spec.PodCount != 2 || kc.Spec.NodeDeletedAt != nil {
		t.Fatalf("record left by the killed collector: %+v, %v", kc, err)
	}

	b := startCollector(t, "collector-restarted")
	b.Resume(inc)
	clustertest.Eventually(t, 30*time.Second, "work left", func() bool { return b.Pending() == 0 })
	kc, err = store.Get(ctx, inc.ID)
	if err != nil {
		t.Fatal(err)
	}
	s := kc.Spec
	if s.Outcome != string(cleanup.OutcomeCleanedUp) || s.Node.Name != node.Name || s.Node.UID != node.UID || s.NodeDeletedAt == nil ||
		s.PodCount != 2 || len(s.Pods) != 2 || s.ReportedBy != "collector-restarted" || s.Cause != inc.Cause ||
		!slices.ContainsFunc(s.Pods, func(p cleanup.EndedPod) bool { return p.Name == "pod-1" && p.OwnerKind == "Job" }) {
		t.Errorf("record %+v", s)
	}
	// An incident resumed whose Node is gone, and which left no
	// record, makes none.
	other := nullPanic("10.210.9.10")
	b.Resume(other)
	clustertest.Eventually(t, 30*time.Second, "work left", func() bool { return b.Pending() == 0 })
	if _, err := store.Get(ctx, other.ID); !apierrors.IsNotFound(err) {
		t.Errorf("a record of a resumed incident about no node: %v", err)
	}
}

// TestPendingReplaced: the record written before a node is ended is
// pending while its pods are ended, and replaced by the final one.
func TestPendingReplaced(t *testing.T) {
	cs, store, _ := clients(t)
	ctx := context.Background()
	var seen []string
	c := startCollector(t, "collector-p", func(cfg *cleanup.Config) {
		record := cfg.Record
		cfg.Record = func(ctx context.Context, f cleanup.Finished) error {
			if err := record(ctx, f); err != nil {
				return err
			}
			kc, err := store.Get(ctx, f.Incident.ID)
			if err == nil {
				seen = append(seen, kc.Spec.Outcome)
			}
			return err
		}
	})
	node := clustertest.Node(t, cs, clustertest.Unique("node"), clustertest.InternalIP("10.210.0.15"), nil)
	clustertest.Pods(t, cs, clustertest.Unique("ns"), node.Name, 1)
	inc := nullPanic("10.210.0.15")
	c.waitFor(t, inc.Source, 1)
	c.Enqueue(inc)
	clustertest.Eventually(t, 30*time.Second, "work left", func() bool { return c.Pending() == 0 })
	if want := []string{"pending: cleaned up", "cleaned up"}; !slices.Equal(seen, want) {
		t.Errorf("record's outcomes %q, want %q", seen, want)
	}
	kc, err := store.Get(ctx, inc.ID)
	if err != nil || kc.Spec.PodCount != 1 || kc.Spec.NodeDeletedAt == nil {
		t.Errorf("record %+v: %v", kc, err)
	}
}

// TestDryRunRecorded: a dry run's incident is recorded, its outcome
// "dry run: cleaned up", the pods it would have ended listed, and
// nothing else written: the node and its pods are as they were.
func TestDryRunRecorded(t *testing.T) {
	cs, store, _ := clients(t)
	ctx := context.Background()
	c := startCollector(t, "collector-dry", func(cfg *cleanup.Config) { cfg.DryRun = true })
	node := clustertest.Node(t, cs, clustertest.Unique("node"), clustertest.InternalIP("10.210.0.16"), nil)
	t.Cleanup(func() { cs.CoreV1().Nodes().Delete(context.Background(), node.Name, metav1.DeleteOptions{}) })
	ns := clustertest.Unique("ns")
	pods := clustertest.Pods(t, cs, ns, node.Name, 1)
	inc := nullPanic("10.210.0.16")
	c.waitFor(t, inc.Source, 1)
	c.Enqueue(inc)
	clustertest.Eventually(t, 30*time.Second, "work left", func() bool { return c.Pending() == 0 })
	kc, err := store.Get(ctx, inc.ID)
	if err != nil {
		t.Fatal(err)
	}
	if s := kc.Spec; s.Outcome != "dry run: cleaned up" || s.NodeDeletedAt != nil || s.PodCount != 1 || s.Node.UID != node.UID {
		t.Errorf("record %+v", s)
	}
	n, err := cs.CoreV1().Nodes().Get(ctx, node.Name, metav1.GetOptions{})
	if err != nil || n.Annotations[cleanup.AnnotationIncident] != "" {
		t.Errorf("node written: %v %v", err, n.Annotations)
	}
	for _, p := range pods {
		got, err := cs.CoreV1().Pods(ns).Get(ctx, p.Name, metav1.GetOptions{})
		if err != nil || got.DeletionTimestamp != nil || got.ResourceVersion != p.ResourceVersion {
			t.Errorf("%s written: %v", p.Name, err)
		}
	}
}

// record makes a record whose crash's last line came ago before now.
func record(ago time.Duration) *crashrecord.KernelCrash {
	inc := nullPanic("10.210.1.1")
	inc.First, inc.Last = time.Now().Add(-ago-time.Second), time.Now().Add(-ago)
	return crashrecord.FromFinished(cleanup.Finished{Incident: inc, Outcome: cleanup.OutcomeCleanedUp, Node: "gone"}, "test")
}

// TestPrune: records of crashes older than the retention are deleted,
// the others kept; a second create of a record is done, not an error.
func TestPrune(t *testing.T) {
	_, store, _ := clients(t)
	ctx := context.Background()
	old, recent := record(40*24*time.Hour), record(24*time.Hour)
	for _, kc := range []*crashrecord.KernelCrash{old, recent, recent} {
		if _, err := store.Create(ctx, kc); err != nil {
			t.Fatal(err)
		}
	}
	if created, err := store.Create(ctx, recent); err != nil || created {
		t.Errorf("second create: created %v, %v", created, err)
	}
	n, err := store.Prune(ctx, crashrecord.DefaultRetention, time.Now())
	if err != nil || n < 1 {
		t.Fatalf("pruned %d: %v", n, err)
	}
	if _, err := store.Get(ctx, old.Name); !apierrors.IsNotFound(err) {
		t.Errorf("old record kept: %v", err)
	}
	if _, err := store.Get(ctx, recent.Name); err != nil {
		t.Errorf("recent record: %v", err)
	}
}

// TestSchemaRefuses: the API server refuses a record that breaks the
// CRD's schema.
func TestSchemaRefuses(t *testing.T) {
	_, store, dyn := clients(t)
	ctx := context.Background()
	for name, spoil := range map[string]func(spec map[string]any){
		"unknown kind":    func(s map[string]any) { s["kind"] = "nonsense" },
		"no outcome":      func(s map[string]any) { delete(s, "outcome") },
		"bad incident id": func(s map[string]any) { s["incident"] = "Not-An-Id" },
		"too many lines": func(s map[string]any) {
			lines := make([]any, crashrecord.MaxLines+1)
			for i := range lines {
				lines[i] = "x"
			}
			s["lines"] = lines
		},
		"negative pods":   func(s map[string]any) { s["podCount"] = int64(-1) },
		"time not a time": func(s map[string]any) { s["firstTime"] = "yesterday" },
	} {
		kc := record(time.Hour)
		good, err := crashrecord.ToUnstructured(kc)
		if err != nil {
			t.Fatal(err)
		}
		spec := good.Object["spec"].(map[string]any)
		spoil(spec)
		_, err = dyn.Resource(crashrecord.Resource).Create(ctx, &unstructured.Unstructured{Object: good.Object}, metav1.CreateOptions{})
		if !apierrors.IsInvalid(err) {
			t.Errorf("%s: created, or not refused as invalid: %v", name, err)
		}
	}
	// The record as made is valid.
	if _, err := store.Create(ctx, record(time.Hour)); err != nil {
		t.Errorf("a good record: %v", err)
	}
}

// TestCappedRecorded: a crash the node deletion cap held back says so
// in its record, as the API server keeps it (the schema has the field:
// an unknown one would be pruned).
func TestCappedRecorded(t *testing.T) {
	_, store, _ := clients(t)
	capped := time.Now().Add(-40 * time.Second).Truncate(time.Second)
	inc := detect.Incident{ID: "c4pped0123456789", Kind: "panic", Fatal: true, Reason: "Kernel panic - not syncing: capped", First: capped, Last: capped}
	node := "capped-node"
	rec := &crashrecord.Recorder{Store: store, Instance: "c"}
	if err := rec.Record(context.Background(), cleanup.Finished{Incident: inc, Outcome: cleanup.OutcomeCleanedUp, Node: node, CappedAt: capped, NodeDeletedAt: time.Now(), At: time.Now()}); err != nil {
		t.Fatal(err)
	}
	all, err := store.List(context.Background(), crashrecord.LabelNode+"="+node)
	if err != nil || len(all) != 1 {
		t.Fatalf("%d records, %v", len(all), err)
	}
	if got := all[0].Spec.CappedAt; got == nil || !got.Time.Equal(capped) {
		t.Errorf("cappedAt %v, want %v", got, capped)
	}
}

// TestKernelRelease: from the real captures' report line, tainted or not.
func TestKernelRelease(t *testing.T) {
	for line, want := range map[string]string{
		"[    3.765806] CPU: 0 PID: 104 Comm: insmod Tainted: G           OE      6.1.0-56-amd64 #1  Debian 6.1.192-2": "6.1.0-56-amd64",
		"CPU: 1 UID: 0 PID: 1 Comm: sh Not tainted 6.18.0-rc4+ #12 PREEMPT(voluntary)":                                 "6.18.0-rc4+",
		"lg-noise: ordinary kernel line 3 from a healthy node":                                                         "",
	} {
		if got := crashrecord.KernelRelease([]string{line}); got != want {
			t.Errorf("%q: %q, want %q", line, got, want)
		}
	}
}

// TestReleaseFromExtradata: the release netconsole sent (sysdata, or the
// release prepend) is the record's, before the report line's; one longer
// than any kernel's is not.
func TestReleaseFromExtradata(t *testing.T) {
	inc := detect.Incident{ID: "0123456789abcdef", Release: "6.17.0-lastgasp", Lines: []string{"CPU: 1 UID: 0 PID: 1 Comm: sh Not tainted 6.18.0-rc4+ #12"}}
	if got := crashrecord.FromFinished(cleanup.Finished{Incident: inc}, "c").Spec.KernelRelease; got != "6.17.0-lastgasp" {
		t.Errorf("release %q", got)
	}
	inc.Release = strings.Repeat("6", 65)
	if got := crashrecord.FromFinished(cleanup.Finished{Incident: inc}, "c").Spec.KernelRelease; got != "6.18.0-rc4+" {
		t.Errorf("release %q", got)
	}
}

// TestPrinterColumns: kubectl get kernelcrashes shows the node, kind,
// reason, outcome, pods and age (and with -o wide the signature), from
// the API server's own table.
func TestPrinterColumns(t *testing.T) {
	cs, store, _ := clients(t)
	kc := record(time.Minute)
	if _, err := store.Create(context.Background(), kc); err != nil {
		t.Fatal(err)
	}
	body, err := cs.Discovery().RESTClient().Get().AbsPath("/apis/lastgasp.io/v1alpha1/kernelcrashes", kc.Name).
		SetHeader("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io").DoRaw(context.Background())
	if err != nil {
		t.Fatalf("%v: %s", err, body)
	}
	var table metav1.Table
	if err := json.Unmarshal(body, &table); err != nil {
		t.Fatalf("%v: %s", err, body)
	}
	var names []string
	for _, c := range table.ColumnDefinitions {
		names = append(names, c.Name)
	}
	if got, want := strings.Join(names, " "), "Name Node Kind Reason Outcome Pods Signature Age"; got != want {
		t.Errorf("columns %q, want %q", got, want)
	}
	if len(table.Rows) != 1 || fmt.Sprint(table.Rows[0].Cells[1:6]) != fmt.Sprint([]any{"gone", "oops", kc.Spec.Reason, "cleaned up", float64(0)}) {
		t.Errorf("rows %+v", table.Rows)
	}
}
