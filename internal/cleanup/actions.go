package cleanup

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/lastgasp/lastgasp/internal/detect"
)

// Annotations lastgasp writes.
const (
	// On the Pods and the Node of a fatal incident.
	AnnotationReason     = "lastgasp.io/termination-reason"      // "the node's kernel panicked: <reason>"
	AnnotationReasonCode = "lastgasp.io/termination-reason-code" // the incident kind
	AnnotationIncident   = "lastgasp.io/incident"                // the incident id

	// On the Node of a non-fatal incident.
	AnnotationKernelIncident       = "lastgasp.io/kernel-incident"
	AnnotationKernelIncidentKind   = "lastgasp.io/kernel-incident-kind"
	AnnotationKernelIncidentReason = "lastgasp.io/kernel-incident-reason"

	// On the Node of a panic that could not be confirmed.
	AnnotationUnconfirmed         = "lastgasp.io/unconfirmed-incident"
	AnnotationUnconfirmedEvidence = "lastgasp.io/unconfirmed-incident-evidence"
)

// TaintKey is the taint put on a node with a non-fatal incident, if asked.
const TaintKey = "lastgasp.io/kernel-oops"

// Condition and Event reasons.
const (
	// ConditionReasonKernelPanic is the reason of the DisruptionTarget
	// condition given to the Pods.
	ConditionReasonKernelPanic = "KernelPanic"
	// EventReasonNodeKernelPanic is the Event on the Pods and the Node.
	EventReasonNodeKernelPanic = "NodeKernelPanic"
	// EventReasonKernelPanicUnconfirmed is the Event on a live Node.
	EventReasonKernelPanicUnconfirmed = "KernelPanicUnconfirmed"
	// EventReasonNodeKernelProblem is the Event of a non-fatal incident.
	EventReasonNodeKernelProblem = "NodeKernelProblem"
)

// fieldManager owns what lastgasp writes.
const fieldManager = "lastgasp"

// podEndManager owns what patchPodEnd writes to a pod's status: a name of
// its own for that set of fields. (Earlier versions server-side applied
// them, as "lastgasp" and then as this name; server-side apply removes
// only fields its own manager applied before, never fields a patch
// wrote, so a rollout mixing versions leaves the phase and the
// annotations in place.)
const podEndManager = "lastgasp-pod-end"

// maxAnnotationText bounds the kernel text put in an annotation.
const maxAnnotationText = 1024

func clip(s string) string {
	if len(s) > maxAnnotationText {
		return s[:maxAnnotationText] + "…"
	}
	return s
}

// terminationReason is the human text of a fatal incident.
func terminationReason(inc detect.Incident) string {
	return clip("the node's kernel panicked: " + inc.Reason)
}

// podWorkers bounds how many of a node's Pods are ended at once.
const podWorkers = 64

// eventWorkers bounds how many of a node's Events are written at once:
// they go at their own client's rate (EventClientConfig) anyway, and
// fewer requests in flight leave the API server's seats (Priority and
// Fairness gives both clients one flow) to the next node's end.
const eventWorkers = 8

// adoptWindow is how recent another incident's end of a node's pods must
// be for a fatal incident to be taken as the same death: a dead kernel
// dies once, and its node's pods are ended within seconds of each other;
// a pod left Failed from an earlier death of a kept node is older.
const adoptWindow = 10 * time.Minute

// endingIncident returns the id of the incident that ended pods on this
// node within adoptWindow of now (their DisruptionTarget condition with
// reason KernelPanic, and their incident annotation), the smallest if
// several, or "".
func endingIncident(pods []*corev1.Pod, now time.Time) string {
	id := ""
	for _, pod := range pods {
		other := pod.Annotations[AnnotationIncident]
		if other == "" || (id != "" && other >= id) {
			continue
		}
		for _, cond := range pod.Status.Conditions {
			if cond.Type == corev1.DisruptionTarget && cond.Reason == ConditionReasonKernelPanic && now.Sub(cond.LastTransitionTime.Time) < adoptWindow {
				id = other
				break
			}
		}
	}
	return id
}

// cleanUp ends the Pods bound to the node, in parallel, then the Node;
// it leaves the Events to write in w.events, off the path to the Node's
// deletion and off the worker. The incident's record is written first,
// pending (to become outcome).
func (c *Controller) cleanUp(ctx context.Context, log *slog.Logger, node *corev1.Node, w *work, outcome Outcome) error {
	inc := w.inc
	pods, err := c.cfg.Index.PodsOn(node.Name)
	if err != nil {
		return err
	}
	if other := endingIncident(pods, time.Now()); other != "" && other != inc.ID {
		// Another collector heard the same death under another id (it
		// lost the trigger this one's id is made of, or the reverse) and
		// is ending this node, or did: write under its id, so the node
		// and its pods get one set of annotations and Events.
		log.Info("this node's pods are being ended under another id of the same death: writing under that one", "adopted", other)
		inc.ID = other
	}
	w.recordID = inc.ID
	if err := c.recordPending(ctx, log, w, pods, outcome); err != nil {
		return err
	}
	log.Info("cleaning up a dead node", "pods", len(pods), "pod_action", c.cfg.PodAction, "keep_node", c.cfg.KeepNode, "reason", inc.Reason, "cause", inc.Cause)
	if c.cfg.PodAction != PodsNone {
		g, gctx := errgroup.WithContext(ctx)
		g.SetLimit(podWorkers)
		for _, pod := range pods {
			if pod.DeletionTimestamp != nil && pod.Annotations[AnnotationIncident] == inc.ID {
				continue // ended already by this incident: another collector was first
			}
			g.Go(func() error { return c.endPod(gctx, log, pod, inc) })
		}
		if err := g.Wait(); err != nil {
			return err
		}
		w.ended = endedPods(pods)
	}
	annotations := map[string]string{
		AnnotationReason:     terminationReason(inc),
		AnnotationReasonCode: string(inc.Kind),
		AnnotationIncident:   inc.ID,
	}
	err = c.write(log, "annotate node", func() error {
		return ignoreGone(c.annotateNode(ctx, node, annotations))
	})
	if err != nil {
		return err
	}
	if !c.cfg.KeepNode {
		err = c.write(log, "delete node", func() error {
			uid := node.UID
			err := c.cfg.Client.CoreV1().Nodes().Delete(ctx, node.Name, metav1.DeleteOptions{
				Preconditions: &metav1.Preconditions{UID: &uid},
			})
			if err == nil {
				c.stats.NodesDeleted.Add(1) // by us, not by another collector
			}
			return ignoreGone(err)
		})
		if err != nil {
			return err
		}
		w.deletedAt = time.Now()
	}
	log.Info("node ended", "pods", len(pods), "node_kept", c.cfg.KeepNode, "dry_run", c.cfg.DryRun)

	// The Events: the Node's, each Pod's, their owners'. They are
	// written once the worker has let go of this incident
	// (processNextWorkItem), so that a hundred nodes' Events, at their
	// client's rate, never keep the next node waiting for a worker.
	w.events = func(ctx context.Context) {
		c.event(ctx, log, nodeRef(node), inc.ID, EventReasonNodeKernelPanic, terminationReason(inc)+" (cause: "+inc.Cause+")")
		if c.cfg.PodAction == PodsNone {
			return
		}
		var g errgroup.Group
		g.SetLimit(eventWorkers)
		for _, pod := range pods {
			g.Go(func() error {
				c.event(ctx, log, podRef(pod), inc.ID, EventReasonNodeKernelPanic, terminationReason(inc))
				return nil
			})
		}
		g.Wait()
		c.ownerEvents(ctx, log, pods, inc)
	}
	return nil
}

// endPodTries bounds the reads and patches of one Pod whose cached copy
// was behind. Two collectors ending the same pod move it on twice (the
// other's status patch, then its deletion, which sets the deletion
// timestamp of a pod held by a finalizer).
const endPodTries = 5

// endPod gives one Pod its end and deletes it: two calls when the cache
// is current. The status patch carries the resourceVersion the cache saw,
// so that it applies only to the Pod as the cache holds it (its phase
// included: the API server would let Failed overwrite a Succeeded the
// cache has not seen yet); on a conflict the Pod is read again and the
// patch made for what it is now, unless it carries the incident's
// annotation already (another collector ended it).
func (c *Controller) endPod(ctx context.Context, log *slog.Logger, pod *corev1.Pod, inc detect.Incident) error {
	log = log.With("pod", pod.Namespace+"/"+pod.Name)
	err := c.write(log, "set the pod's end: phase Failed, DisruptionTarget condition, annotations", func() error {
		current := pod
		for try := 1; ; try++ {
			if current.Annotations[AnnotationIncident] == inc.ID {
				return nil // ended already, by another collector or before a restart
			}
			err := c.patchPodEnd(ctx, current, inc)
			switch {
			case err == nil:
				c.stats.PodsFailed.Add(1)
				return nil
			case apierrors.IsNotFound(err):
				return nil // gone already
			case !apierrors.IsConflict(err) || try == endPodTries:
				return err
			}
			// Another writer (a collector, the kubelet before it died)
			// moved the pod on since the cache saw it: wait for the
			// cache to catch up (a read from the API server would need
			// a right lastgasp does not otherwise have).
			c.stats.PodRereads.Add(1)
			if current, err = c.caughtUp(ctx, current); err != nil || current == nil || current.UID != pod.UID {
				return err // gone, or the name is another pod's now (nil); or the cache is stuck
			}
		}
	})
	if err != nil || c.cfg.PodAction == PodsFail {
		return err
	}
	return c.write(log, "delete pod", func() error {
		uid := pod.UID
		zero := int64(0) // the kubelet that would honour a grace period is dead
		err := c.cfg.Client.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{
			GracePeriodSeconds: &zero,
			Preconditions:      &metav1.Preconditions{UID: &uid},
		})
		if err == nil {
			c.stats.PodsDeleted.Add(1) // by us, not by another collector
		}
		return ignoreGone(err)
	})
}

// cacheCatchUp bounds how long endPod waits for the cache to hold a
// newer version of a pod than the one a patch failed on.
const cacheCatchUp = 5 * time.Second

// caughtUp waits until the cache holds the pod in a newer version than
// stale, and returns it (nil if gone).
func (c *Controller) caughtUp(ctx context.Context, stale *corev1.Pod) (*corev1.Pod, error) {
	deadline := time.Now().Add(cacheCatchUp)
	for {
		now, err := c.cfg.Index.Pod(stale.Namespace, stale.Name)
		if err != nil || now == nil || now.ResourceVersion != stale.ResourceVersion {
			return now, err
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("pod %s/%s changed, and the cache did not catch up in %s", stale.Namespace, stale.Name, cacheCatchUp)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// patchPodEnd patches, through the status subresource (which keeps
// metadata annotations), the incident's annotations and, unless the pod
// had ended already, phase Failed and the DisruptionTarget condition, as
// the pod garbage collector gives a pod of a vanished node. A pod that
// had ended (Succeeded, Failed) did not die of the panic: it gets the
// annotations only, so that a Job's podFailurePolicy does not read a
// disruption into it. The patch carries the UID and the resourceVersion
// the pod was read with: it fails (409 Conflict) on a pod changed since,
// or recreated under the name. The condition's time is the incident's,
// so that every collector writes the same status.
func (c *Controller) patchPodEnd(ctx context.Context, pod *corev1.Pod, inc detect.Incident) error {
	patch := map[string]any{"metadata": map[string]any{
		"uid":             pod.UID,
		"resourceVersion": pod.ResourceVersion,
		"annotations": map[string]string{
			AnnotationReason:     terminationReason(inc),
			AnnotationReasonCode: string(inc.Kind),
			AnnotationIncident:   inc.ID,
		},
	}}
	if phase := pod.Status.Phase; phase != corev1.PodSucceeded && phase != corev1.PodFailed {
		patch["status"] = map[string]any{
			"phase": corev1.PodFailed,
			"conditions": []corev1.PodCondition{{
				Type:               corev1.DisruptionTarget,
				Status:             corev1.ConditionTrue,
				Reason:             ConditionReasonKernelPanic,
				Message:            terminationReason(inc) + " (incident " + inc.ID + ")",
				LastTransitionTime: metav1.NewTime(inc.First.Truncate(time.Second)),
			}},
		}
	}
	data, err := json.Marshal(patch)
	if err != nil {
		return err
	}
	_, err = c.cfg.Client.CoreV1().Pods(pod.Namespace).Patch(ctx, pod.Name, types.StrategicMergePatchType, data, metav1.PatchOptions{FieldManager: podEndManager}, "status")
	return err
}

// reportNonFatal annotates the Node, records an Event, and taints it if
// asked.
func (c *Controller) reportNonFatal(ctx context.Context, log *slog.Logger, node *corev1.Node, inc detect.Incident) error {
	log.Info("non-fatal kernel incident: reported on the node", "reason", inc.Reason)
	msg := clip(fmt.Sprintf("the node's kernel reported a %s and is still running: %s", inc.Kind, inc.Reason))
	err := c.write(log, "annotate node", func() error {
		return ignoreGone(c.annotateNode(ctx, node, map[string]string{
			AnnotationKernelIncident:       inc.ID,
			AnnotationKernelIncidentKind:   string(inc.Kind),
			AnnotationKernelIncidentReason: clip(inc.Reason),
		}))
	})
	if err != nil {
		return err
	}
	c.event(ctx, log, nodeRef(node), inc.ID, EventReasonNodeKernelProblem, msg)
	if !c.cfg.TaintNonFatal {
		return nil
	}
	return c.write(log, "taint node", func() error {
		return ignoreGone(c.taint(ctx, node))
	})
}

// taint adds the lastgasp.io/kernel-oops:NoSchedule taint to the node,
// keeping its other taints. Node taints are an atomic list (a merge
// patch or an apply would replace them all), so this is a JSON patch
// that first tests the UID and the taints the cache holds, then appends;
// if either changed meanwhile the test fails (422), and the attempt is
// retried once the cache has caught up. A patch never creates: a node
// deleted meanwhile is a 404.
func (c *Controller) taint(ctx context.Context, node *corev1.Node) error {
	for _, t := range node.Spec.Taints {
		if t.Key == TaintKey {
			return nil // there already
		}
	}
	ours := corev1.Taint{Key: TaintKey, Effect: corev1.TaintEffectNoSchedule}
	ops := []map[string]any{{"op": "test", "path": "/metadata/uid", "value": node.UID}}
	if len(node.Spec.Taints) == 0 {
		ops = append(ops,
			map[string]any{"op": "test", "path": "/spec/taints", "value": nil}, // absent
			map[string]any{"op": "add", "path": "/spec/taints", "value": []corev1.Taint{ours}})
	} else {
		ops = append(ops,
			map[string]any{"op": "test", "path": "/spec/taints", "value": node.Spec.Taints},
			map[string]any{"op": "add", "path": "/spec/taints/-", "value": ours})
	}
	patch, err := json.Marshal(ops)
	if err != nil {
		return err
	}
	_, err = c.cfg.Client.CoreV1().Nodes().Patch(ctx, node.Name, types.JSONPatchType, patch, metav1.PatchOptions{FieldManager: fieldManager})
	if apierrors.IsInvalid(err) {
		// Not the API server refusing for good (permanent): the test
		// op failed, the cache is behind. Retried.
		return fmt.Errorf("%w: the node's taints changed since they were cached (%v)", errCacheBehind, err)
	}
	return err
}

// errCacheBehind is a write refused because it tested what the cache
// held and the object had changed: retried once the cache catches up.
var errCacheBehind = errors.New("the cache is behind")

// reportUnconfirmed marks a node that a panic was claimed for and that was
// found alive, or could not be told dead.
func (c *Controller) reportUnconfirmed(ctx context.Context, log *slog.Logger, node *corev1.Node, inc detect.Incident, alive bool, evidence string) error {
	err := c.write(log, "annotate node", func() error {
		return ignoreGone(c.annotateNode(ctx, node, map[string]string{
			AnnotationUnconfirmed:         inc.ID,
			AnnotationUnconfirmedEvidence: clip(evidence),
		}))
	})
	if err != nil {
		return err
	}
	msg := clip(fmt.Sprintf("a kernel panic was reported from %s but the node is alive (%s); nothing was deleted: %s", inc.Source, evidence, inc.Reason))
	if !alive {
		msg = clip(fmt.Sprintf("a kernel panic was reported from %s but could not be confirmed (%s); nothing was deleted: %s", inc.Source, evidence, inc.Reason))
	}
	c.event(ctx, log, nodeRef(node), inc.ID, EventReasonKernelPanicUnconfirmed, msg)
	return nil
}

// annotateNode merges annotations into a Node's metadata. The patch
// carries the Node's UID, so that it fails (409 Conflict) on a node
// registered again under the name. (Pods are annotated through their
// status: see applyPodEnd.)
func (c *Controller) annotateNode(ctx context.Context, node *corev1.Node, annotations map[string]string) error {
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"uid": node.UID, "annotations": annotations}})
	if err != nil {
		return err
	}
	_, err = c.cfg.Client.CoreV1().Nodes().Patch(ctx, node.Name, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: fieldManager})
	return err
}

// ignoreGone treats "not found" and a failed UID precondition (409: the
// name now belongs to another object) as done: the object we meant is
// gone, and the other one is not ours to touch.
func ignoreGone(err error) error {
	if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
		return nil
	}
	return err
}

// Stats counts what the controller did.
type Stats struct {
	NotAllowed    atomic.Uint64 // incidents from a source outside AllowedSources
	NotSelected   atomic.Uint64 // fatal incidents refused: the node is not one NodeSelector selects
	UnknownSource atomic.Uint64 // incidents from a source that is no node's
	Ambiguous     atomic.Uint64 // fatal incidents refused: several nodes claim the source
	NameMismatch  atomic.Uint64 // incidents refused: their messages name a node the source is not
	NonFatal      atomic.Uint64 // non-fatal incidents reported on a node
	Unconfirmed   atomic.Uint64 // panics refused: the node was alive
	Undecided     atomic.Uint64 // panics finished unconfirmed: neither dead nor alive could be proved
	// UndecidedRetries counts confirmations that proved nothing and
	// were tried again later (not API errors).
	UndecidedRetries atomic.Uint64
	// ForgeryDelayed counts fatal incidents held back by the forgery
	// backoff of their node (no address is kept as a label).
	ForgeryDelayed atomic.Uint64
	Capped         atomic.Uint64 // node cleanups delayed by the deletion cap
	Braked         atomic.Uint64 // node cleanups refused by the share brake (finished unconfirmed)
	PodsFailed     atomic.Uint64 // pod statuses set
	PodRereads     atomic.Uint64 // pods read again because the cache was behind
	PodsDeleted    atomic.Uint64 // pods this controller deleted
	NodesDeleted   atomic.Uint64 // nodes this controller deleted
	Events         atomic.Uint64 // Events created
	EventErrors    atomic.Uint64 // Events that could not be recorded (logged; the cleanup goes on)
	APIErrors      atomic.Uint64 // attempts that failed and were retried
	Failed         atomic.Uint64 // incidents finished as failed: the API server refused an action for good
	RecordErrors   atomic.Uint64 // incidents finished without their record (Config.Record failed for good)
	Stormed        atomic.Uint64 // node cleanups refused by Config.Hold (a storm; finished unconfirmed)
}
