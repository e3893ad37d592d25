package cleanup

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/lastgasp/lastgasp/internal/detect"
)

// Finished is what was done about a node's incident, for Config.Record:
// what outlives the node, its pods and the collector.
type Finished struct {
	// Incident is the incident, its ID the one its writes were made
	// under (another collector's id of the same death, if this one
	// adopted it).
	Incident detect.Incident
	// Outcome is the incident's, or a pending or a dry run's (prefixed
	// OutcomePending or OutcomeDryRun).
	Outcome Outcome
	// Node and NodeUID name the Node the incident was about; no Node:
	// a resumed incident whose Node was gone (see Config.Record).
	Node    string
	NodeUID types.UID
	// ConfirmedDeadAt is when the node was found dead (zero: not
	// confirmed, or no confirmation asked); NodeDeletedAt when its Node
	// was deleted (zero: it was not).
	ConfirmedDeadAt, NodeDeletedAt time.Time
	// CappedAt is when the node deletion cap first held the incident
	// back, to wait its turn (zero: it did not).
	CappedAt time.Time
	// Pods are the pods the incident ended (pending: is about to end;
	// dry run: would have ended).
	Pods []EndedPod
	// At is when the incident was finished with.
	At time.Time
}

// EndedPod is a pod a fatal incident ended, and its controller.
type EndedPod struct {
	Namespace string    `json:"namespace"`
	Name      string    `json:"name"`
	UID       types.UID `json:"uid"`
	OwnerKind string    `json:"ownerKind,omitempty"`
	OwnerName string    `json:"ownerName,omitempty"`
}

// recordState is what a work item gathers for its record.
type recordState struct {
	nodeUID   types.UID
	ended     []EndedPod
	deletedAt time.Time
	recordID  string // the id writes were made under; "" means inc.ID
	tries     int    // failed attempts at the record
	// pendingDone is set once the pending record was written (or could
	// not be, for good): not again on a retry.
	pendingDone  bool
	pendingTries int
}

// recordTries bounds the attempts at an incident's record: a record
// that cannot be written (no CRD installed, no right) must not hold the
// incident unfinished for ever.
const recordTries = 8

// recordTimeout bounds one attempt at a record.
const recordTimeout = 30 * time.Second

// pendingTries bounds the attempts at a pending record before its node
// is ended without it: the history must not hold a dead node's cleanup
// for long.
const pendingTries = 3

// recordPending writes the record of a confirmed dead node's incident,
// its outcome pending, before the first of its pods is ended (pods, the
// ones it is about to end): a collector killed after the Node's deletion,
// before the final record, leaves it pending, and the one that resumes
// the incident finishes it. An error is returned to be retried with the
// incident; one that retrying cannot help (no CRD, no right), or
// pendingTries of them, lets the cleanup go on without it.
func (c *Controller) recordPending(ctx context.Context, log *slog.Logger, w *work, pods []*corev1.Pod, outcome Outcome) error {
	if c.cfg.Record == nil || c.cfg.DryRun || w.pendingDone {
		return nil
	}
	f := Finished{
		Incident: w.inc, Outcome: OutcomePending + outcome, Node: w.node, NodeUID: w.nodeUID,
		ConfirmedDeadAt: w.confirmedAt, Pods: endedPods(pods), At: time.Now(),
	}
	f.Incident.ID = w.recordID
	attempt, cancel := context.WithTimeout(ctx, recordTimeout)
	err := c.cfg.Record(attempt, f)
	cancel()
	if err == nil {
		w.pendingDone = true
		return nil
	}
	w.pendingTries++
	if ctx.Err() != nil || !(permanent(err) || apierrors.IsNotFound(err) || w.pendingTries >= pendingTries) {
		return fmt.Errorf("pending record: %w", err)
	}
	w.pendingDone = true
	c.stats.RecordErrors.Add(1)
	log.Error("the incident's pending record could not be written: ending the node without it", "tries", w.pendingTries, "error", err)
	return nil
}

// record hands a finished incident to Config.Record, if there is one and
// the incident was about a node (those about none are what a forgery
// flood makes: no record of them, or a flood would fill etcd), or was
// resumed (its Node may be gone because the run before deleted it). It
// reports false when the record failed and should be tried again.
func (c *Controller) record(ctx context.Context, w *work, outcome Outcome) bool {
	if c.cfg.Record == nil || (w.node == "" && !w.resumed) {
		return true
	}
	f := Finished{
		Incident: w.inc, Outcome: outcome, Node: w.node, NodeUID: w.nodeUID,
		ConfirmedDeadAt: w.confirmedAt, NodeDeletedAt: w.deletedAt, CappedAt: w.cappedAt, Pods: w.ended, At: time.Now(),
	}
	if c.cfg.DryRun {
		if w.node == "" {
			return true
		}
		f.Outcome, f.NodeDeletedAt = OutcomeDryRun+outcome, time.Time{}
	}
	if w.recordID != "" {
		f.Incident.ID = w.recordID
	}
	attempt, cancel := context.WithTimeout(ctx, recordTimeout)
	err := c.cfg.Record(attempt, f)
	cancel()
	if err == nil {
		return true
	}
	w.tries++
	log := c.log.With(incidentAttrs(w.inc)...)
	if ctx.Err() != nil {
		return false // shutting down: the incident stays unfinished in the journal
	}
	if w.tries >= recordTries || permanent(err) {
		c.stats.RecordErrors.Add(1)
		log.Error("the incident's record could not be written: finished without it", "tries", w.tries, "error", err)
		return true
	}
	w.finishedAs = outcome
	log.Warn("the incident's record could not be written, will retry", "error", err)
	return false
}

// endedPods names the pods and their controllers.
func endedPods(pods []*corev1.Pod) []EndedPod {
	out := make([]EndedPod, 0, len(pods))
	for _, p := range pods {
		e := EndedPod{Namespace: p.Namespace, Name: p.Name, UID: p.UID}
		if ref := metav1.GetControllerOf(p); ref != nil {
			e.OwnerKind, e.OwnerName = ref.Kind, ref.Name
		}
		out = append(out, e)
	}
	return out
}

// ownerKinds are the controllers whose pods' ends get an Event of their
// own: `kubectl describe job X` tells the story after its pod is gone.
var ownerKinds = map[string]string{"Job": "batch/v1", "ReplicaSet": "apps/v1", "StatefulSet": "apps/v1", "DaemonSet": "apps/v1"}

// maxNamesInEvent bounds the pod names an owner's Event lists.
const maxNamesInEvent = 10

// ownerEvents records one Event on each controller (Job, ReplicaSet,
// StatefulSet, DaemonSet) of the pods a fatal incident ended, naming its
// pods: one Event an owner, however many of its pods were on the node.
func (c *Controller) ownerEvents(ctx context.Context, log *slog.Logger, pods []*corev1.Pod, inc detect.Incident) {
	type owner struct {
		ref  corev1.ObjectReference
		pods []string
	}
	owners := map[types.UID]*owner{}
	for _, p := range pods {
		ref := metav1.GetControllerOf(p)
		if ref == nil {
			continue
		}
		apiVersion, ok := ownerKinds[ref.Kind]
		if !ok || ref.APIVersion != apiVersion {
			continue
		}
		o := owners[ref.UID]
		if o == nil {
			o = &owner{ref: corev1.ObjectReference{Kind: ref.Kind, APIVersion: ref.APIVersion, Namespace: p.Namespace, Name: ref.Name, UID: ref.UID}}
			owners[ref.UID] = o
		}
		o.pods = append(o.pods, p.Name)
	}
	for _, o := range owners {
		sort.Strings(o.pods)
		names := o.pods
		more := ""
		if len(names) > maxNamesInEvent {
			names, more = names[:maxNamesInEvent], fmt.Sprintf(" and %d more", len(o.pods)-maxNamesInEvent)
		}
		what := "its pod " + names[0]
		if len(o.pods) > 1 {
			what = fmt.Sprintf("%d of its pods (%s%s)", len(o.pods), strings.Join(names, ", "), more)
		}
		c.event(ctx, log, o.ref, inc.ID, EventReasonNodeKernelPanic, clip(fmt.Sprintf("%s ended: %s", what, terminationReason(inc))))
	}
}
