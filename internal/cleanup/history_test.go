package cleanup_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/lastgasp/lastgasp/internal/cleanup"
	"github.com/lastgasp/lastgasp/internal/testrig/clustertest"
)

// ownedPods puts on node, in a new namespace, a bare pod (Succeeded),
// two pods of a Job and one each of a ReplicaSet, a StatefulSet and a
// DaemonSet, and waits for c's cache to hold their owners.
func ownedPods(t *testing.T, c *collector, node string) (string, map[string]metav1.OwnerReference) {
	t.Helper()
	cs := client(t)
	ns, pods := makePods(t, cs, node, 6)
	owners := clustertest.Owners(t, cs, ns)
	for i, kind := range []string{"Job", "Job", "ReplicaSet", "StatefulSet", "DaemonSet"} {
		clustertest.Own(t, cs, pods[i+1], owners[kind])
	}
	clustertest.Eventually(t, 10*time.Second, "cache never held the pods' owners", func() bool {
		for _, p := range pods[1:] {
			if got, _ := c.index.Pod(ns, p.Name); got == nil || len(got.OwnerReferences) == 0 {
				return false
			}
		}
		return true
	})
	return ns, owners
}

// TestOwnerEvents: the controller of each pod a panic ended (Job,
// ReplicaSet, StatefulSet, DaemonSet) gets one Event naming its pods, so
// that it tells the story once the pods are gone.
func TestOwnerEvents(t *testing.T) {
	cs := client(t)
	c := start(t, cs, cleanup.Config{})
	node := makeNode(t, cs, clustertest.InternalIP("10.200.1.11"), nil)
	ns, owners := ownedPods(t, c, node.Name)
	inc := fatal("10.200.1.11")
	c.enqueue(t, inc, 6)
	clustertest.Eventually(t, 30*time.Second, "work left", func() bool { return c.Pending() == 0 })

	want := map[string]string{"Job": "2 of its pods (pod-1, pod-2) ended", "ReplicaSet": "its pod pod-3 ended", "StatefulSet": "its pod pod-4 ended", "DaemonSet": "its pod pod-5 ended"}
	for kind, ref := range owners {
		ev := clustertest.EventsFor(t, cs, ns, ref.UID)
		if len(ev) != 1 || ev[0].Reason != cleanup.EventReasonNodeKernelPanic || ev[0].InvolvedObject.Kind != kind ||
			!strings.HasPrefix(ev[0].Message, want[kind]) || !strings.Contains(ev[0].Message, inc.Reason) {
			t.Errorf("%s: events %+v", kind, ev)
		}
	}
}

// records keeps what Config.Record is given, failing the first fail calls.
type records struct {
	mu    sync.Mutex
	fail  int
	calls int
	got   []cleanup.Finished
}

func (r *records) record(_ context.Context, f cleanup.Finished) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls++
	if !strings.HasPrefix(string(f.Outcome), cleanup.OutcomePending) && r.fail > 0 {
		r.fail--
		return errors.New("the API server is away")
	}
	r.got = append(r.got, f)
	return nil
}

func (r *records) get() (int, []cleanup.Finished) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.calls, append([]cleanup.Finished(nil), r.got...)
}

// TestRecordHook: a finished incident is handed to Config.Record with
// the node's UID, when it was deleted, and the pods ended with their
// controllers, after its pending record (before the first pod was
// ended); a record that fails is retried without applying the incident
// again, and OnDone is told once, after it.
func TestRecordHook(t *testing.T) {
	cs := client(t)
	rec := &records{fail: 2}
	var done outcomes
	c := start(t, cs, cleanup.Config{Record: rec.record, OnDone: done.record})
	node := makeNode(t, cs, clustertest.InternalIP("10.200.1.12"), nil)
	ns, _ := ownedPods(t, c, node.Name)
	inc := fatal("10.200.1.12")
	c.enqueue(t, inc, 6)
	clustertest.Eventually(t, 30*time.Second, "work left", func() bool { return c.Pending() == 0 })

	calls, got := rec.get()
	if calls != 4 || len(got) != 2 {
		t.Fatalf("%d calls, %d records: want 4 calls (2 failed), 2 records (pending, final)", calls, len(got))
	}
	if p := got[0]; p.Incident.ID != inc.ID || p.Outcome != cleanup.OutcomePending+cleanup.OutcomeCleanedUp || p.NodeUID != node.UID ||
		!p.NodeDeletedAt.IsZero() || len(p.Pods) != 6 {
		t.Errorf("pending record %+v", p)
	}
	f := got[1]
	if f.Incident.ID != inc.ID || f.Outcome != cleanup.OutcomeCleanedUp || f.Node != node.Name || f.NodeUID != node.UID ||
		f.NodeDeletedAt.IsZero() || !f.ConfirmedDeadAt.IsZero() || len(f.Pods) != 6 {
		t.Errorf("record %+v", f)
	}
	owned := map[string]string{}
	for _, p := range f.Pods {
		if p.Namespace != ns || p.UID == "" {
			t.Errorf("pod %+v", p)
		}
		owned[p.Name] = p.OwnerKind + "/" + p.OwnerName
	}
	if owned["pod-0"] != "/" || owned["pod-1"] != "Job/job" || owned["pod-3"] != "ReplicaSet/rs" || owned["pod-5"] != "DaemonSet/ds" {
		t.Errorf("owners %v", owned)
	}
	if s := c.Stats(); s.NodesDeleted.Load() != 1 || s.PodsFailed.Load() != 6 {
		t.Errorf("applied again: %d nodes deleted, %d pods failed", s.NodesDeleted.Load(), s.PodsFailed.Load())
	}
	if o := done.get(); len(o) != 1 || o[inc.ID] != cleanup.OutcomeCleanedUp {
		t.Errorf("OnDone %v", o)
	}
}
