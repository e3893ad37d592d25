package cleanup_test

import (
	"testing"

	"github.com/lastgasp/lastgasp/internal/cleanup"
	"github.com/lastgasp/lastgasp/internal/detect"
	"github.com/lastgasp/lastgasp/internal/liveness"
)

// TestPlan checks that the action the collector logs is what the
// controller will do: never "delete" under --keep-node, --pod-action none
// or --dry-run.
func TestPlan(t *testing.T) {
	fatal := detect.Incident{ID: "x", Fatal: true}
	for _, tc := range []struct {
		name string
		cfg  cleanup.Config
		inc  detect.Incident
		want string
	}{
		{"default", cleanup.Config{Prober: &liveness.Prober{}}, fatal, "confirm the node dead, fail and delete its pods, delete the node"},
		{"confirm none", cleanup.Config{}, fatal, "fail and delete its pods, delete the node"},
		{"keep node", cleanup.Config{Prober: &liveness.Prober{}, KeepNode: true}, fatal, "confirm the node dead, fail and delete its pods, annotate the node (kept)"},
		{"pods fail", cleanup.Config{Prober: &liveness.Prober{}, PodAction: cleanup.PodsFail}, fatal, "confirm the node dead, fail its pods, delete the node"},
		{"pods none, keep node", cleanup.Config{Prober: &liveness.Prober{}, PodAction: cleanup.PodsNone, KeepNode: true}, fatal, "confirm the node dead, annotate the node (kept)"},
		{"dry run", cleanup.Config{Prober: &liveness.Prober{}, DryRun: true}, fatal, "dry run, nothing written: would confirm the node dead, fail and delete its pods, delete the node"},
		{"non-fatal", cleanup.Config{}, detect.Incident{ID: "y"}, "annotate the node"},
		{"non-fatal, taint", cleanup.Config{TaintNonFatal: true}, detect.Incident{ID: "y"}, "annotate the node, taint it"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := cleanup.New(tc.cfg).Plan(tc.inc); got != tc.want {
				t.Errorf("Plan = %q, want %q", got, tc.want)
			}
		})
	}
}
