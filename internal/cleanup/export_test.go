package cleanup

import (
	"context"

	corev1 "k8s.io/api/core/v1"

	"github.com/lastgasp/lastgasp/internal/detect"
)

// EndPod runs endPod on pod as given, for tests that hand it a pod as a
// cache that is behind holds it.
func (c *Controller) EndPod(ctx context.Context, pod *corev1.Pod, inc detect.Incident) error {
	return c.endPod(ctx, c.log, pod, inc)
}

// ReportNonFatal runs reportNonFatal on node as given (perhaps deleted
// since).
func (c *Controller) ReportNonFatal(ctx context.Context, node *corev1.Node, inc detect.Incident) error {
	return c.reportNonFatal(ctx, c.log, node, inc)
}
