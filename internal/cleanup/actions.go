package cleanup

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"

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

// podEndManager owns what applyPodEnd applies to a pod's status: a name of
// its own for that set of fields. Server-side apply removes the fields a
// manager applied before and leaves out now, so a collector of an older
// version (which applied the condition and the phase as "lastgasp") and
// a newer one (the annotations and the condition) sharing one name would
// undo each other during a rollout: the phase reset to "", or the
// annotations removed.
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

// cleanUp ends the Pods bound to the node, then the Node.
func (c *Controller) cleanUp(ctx context.Context, log *slog.Logger, node *corev1.Node, inc detect.Incident) error {
	pods, err := c.cfg.Index.PodsOn(node.Name)
	if err != nil {
		return err
	}
	log.Info("cleaning up a dead node", "pods", len(pods), "pod_action", c.cfg.PodAction, "keep_node", c.cfg.KeepNode, "reason", inc.Reason, "cause", inc.Cause)
	for _, pod := range pods {
		if c.cfg.PodAction == PodsNone {
			break
		}
		if err := c.endPod(ctx, log, pod, inc); err != nil {
			return err
		}
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
	c.event(ctx, log, nodeRef(node), inc.ID, EventReasonNodeKernelPanic, terminationReason(inc)+" (cause: "+inc.Cause+")")
	if c.cfg.KeepNode {
		log.Info("node kept (KeepNode)", "pods", len(pods), "dry_run", c.cfg.DryRun)
		return nil
	}
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
	log.Info("node deleted", "pods", len(pods), "dry_run", c.cfg.DryRun)
	return nil
}

// endPod gives one Pod its final status, an Event, and deletes it.
func (c *Controller) endPod(ctx context.Context, log *slog.Logger, pod *corev1.Pod, inc detect.Incident) error {
	log = log.With("pod", pod.Namespace+"/"+pod.Name)
	err := c.write(log, "annotate pod and set its DisruptionTarget condition", func() error {
		err := ignoreGone(c.applyPodEnd(ctx, pod, inc))
		if err == nil {
			c.stats.PodsFailed.Add(1)
		}
		return err
	})
	if err != nil {
		return err
	}
	if phase := pod.Status.Phase; phase != corev1.PodSucceeded && phase != corev1.PodFailed {
		err = c.write(log, "set pod phase Failed", func() error {
			return ignoreGone(c.failPod(ctx, log, pod))
		})
		if err != nil {
			return err
		}
	}
	c.event(ctx, log, podRef(pod), inc.ID, EventReasonNodeKernelPanic, terminationReason(inc))
	if c.cfg.PodAction == PodsFail {
		return nil
	}
	err = c.write(log, "delete pod", func() error {
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
	return err
}

// applyPodEnd server-side applies, through the status subresource (which
// keeps metadata annotations), the incident's annotations and the
// DisruptionTarget condition, as the pod garbage collector gives a pod of
// a vanished node. The condition's time is the incident's, so that every
// collector applies the same status. The UID makes the apply fail (409
// Conflict) on a pod recreated under the same name.
func (c *Controller) applyPodEnd(ctx context.Context, pod *corev1.Pod, inc detect.Incident) error {
	status := corev1ac.PodStatus().WithConditions(corev1ac.PodCondition().
		WithType(corev1.DisruptionTarget).
		WithStatus(corev1.ConditionTrue).
		WithReason(ConditionReasonKernelPanic).
		WithMessage(terminationReason(inc) + " (incident " + inc.ID + ")").
		WithLastTransitionTime(metav1.NewTime(inc.First.Truncate(time.Second))))
	apply := corev1ac.Pod(pod.Name, pod.Namespace).WithUID(pod.UID).
		WithAnnotations(map[string]string{
			AnnotationReason:     terminationReason(inc),
			AnnotationReasonCode: string(inc.Kind),
			AnnotationIncident:   inc.ID,
		}).
		WithStatus(status)
	_, err := c.cfg.Client.CoreV1().Pods(pod.Namespace).ApplyStatus(ctx, apply, metav1.ApplyOptions{FieldManager: podEndManager, Force: true})
	return err
}

// failPod sets the phase of a Pod the cache holds as not ended to
// Failed, on the condition (a JSON patch test) that the API server still
// has it in the phase the cache says, and the same UID. The API server
// does not refuse a change from Succeeded to Failed: without the test, a
// pod that succeeded just before its node died, while the cache was a
// moment behind, would be made a failure. A failed test (422) means the
// pod moved on meanwhile: its phase is left as it is (it is deleted next
// all the same, with the DisruptionTarget condition that says why).
func (c *Controller) failPod(ctx context.Context, log *slog.Logger, pod *corev1.Pod) error {
	var cached any = pod.Status.Phase
	if pod.Status.Phase == "" {
		cached = nil // no phase: test that there is none
	}
	patch, err := json.Marshal([]map[string]any{
		{"op": "test", "path": "/metadata/uid", "value": pod.UID},
		{"op": "test", "path": "/status/phase", "value": cached},
		{"op": "add", "path": "/status/phase", "value": corev1.PodFailed},
	})
	if err != nil {
		return err
	}
	_, err = c.cfg.Client.CoreV1().Pods(pod.Namespace).Patch(ctx, pod.Name, types.JSONPatchType, patch, metav1.PatchOptions{FieldManager: fieldManager}, "status")
	if apierrors.IsInvalid(err) {
		// Most often another collector set it first.
		log.Debug("the pod's phase (or UID) is not what the cache held: phase left as it is", "cached_phase", pod.Status.Phase, "error", err)
		return nil
	}
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
		return fmt.Errorf("the node's taints changed since they were cached: %w", err)
	}
	return err
}

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
	PodsDeleted    atomic.Uint64 // pods this controller deleted
	NodesDeleted   atomic.Uint64 // nodes this controller deleted
	Events         atomic.Uint64 // Events created
	EventErrors    atomic.Uint64 // Events that could not be recorded (logged; the cleanup goes on)
	APIErrors      atomic.Uint64 // attempts that failed and were retried
}
