package cleanup

import (
	"context"
	"log/slog"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// event records a Warning Event about obj. Its name is derived from the
// incident id and the object's UID, so that however many collectors
// record it, and however often, there is one Event: a second create finds
// it already there. (client-go's EventRecorder names Events at random,
// and would record one per collector.) An Event that cannot be recorded
// (a namespace being deleted refuses new objects) is logged and counted,
// and the cleanup goes on: the annotations and status say it too.
func (c *Controller) event(ctx context.Context, log *slog.Logger, obj corev1.ObjectReference, incidentID, reason, message string) {
	now := metav1.NewTime(time.Now())
	namespace := obj.Namespace
	if namespace == "" {
		namespace = metav1.NamespaceDefault // where cluster-scoped objects' Events go
	}
	ev := &corev1.Event{
		ObjectMeta: metav1.ObjectMeta{
			Name:      "lastgasp-" + incidentID + "-" + string(obj.UID),
			Namespace: namespace,
		},
		InvolvedObject:      obj,
		Reason:              reason,
		Message:             message,
		Type:                corev1.EventTypeWarning,
		Source:              corev1.EventSource{Component: "lastgasp"},
		FirstTimestamp:      now,
		LastTimestamp:       now,
		Count:               1,
		ReportingController: "lastgasp.io/lastgasp",
		ReportingInstance:   c.cfg.Instance,
	}
	err := c.write(log, "record event "+reason, func() error {
		_, err := c.cfg.EventClient.CoreV1().Events(namespace).Create(ctx, ev, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			return nil
		}
		if err == nil {
			c.stats.Events.Add(1)
		}
		return err
	})
	if err != nil {
		c.stats.EventErrors.Add(1)
		log.Warn("event not recorded", "reason", reason, "object", obj.Namespace+"/"+obj.Name, "error", err)
	}
}

func podRef(p *corev1.Pod) corev1.ObjectReference {
	return corev1.ObjectReference{Kind: "Pod", APIVersion: "v1", Namespace: p.Namespace, Name: p.Name, UID: p.UID}
}

func nodeRef(n *corev1.Node) corev1.ObjectReference {
	return corev1.ObjectReference{Kind: "Node", APIVersion: "v1", Name: n.Name, UID: n.UID}
}
