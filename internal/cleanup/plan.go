package cleanup

import (
	"strings"

	"github.com/lastgasp/lastgasp/internal/detect"
)

// Plan says, in words, what the controller will do with an incident as it
// is configured: what the collector logs as an incident's action. It is
// read from the same settings the actions obey, so the log never promises
// a deletion that --keep-node, --pod-action none or --dry-run rules out.
func (c *Controller) Plan(inc detect.Incident) string {
	var steps []string
	if !inc.Fatal {
		steps = append(steps, "annotate the node")
		if c.cfg.TaintNonFatal {
			steps = append(steps, "taint it")
		}
	} else {
		if c.cfg.Prober != nil {
			steps = append(steps, "confirm the node dead")
		}
		switch c.cfg.PodAction {
		case PodsFailAndDelete:
			steps = append(steps, "fail and delete its pods")
		case PodsFail:
			steps = append(steps, "fail its pods")
		}
		if c.cfg.KeepNode {
			steps = append(steps, "annotate the node (kept)")
		} else {
			steps = append(steps, "delete the node")
		}
	}
	plan := strings.Join(steps, ", ")
	if c.cfg.DryRun {
		plan = "dry run, nothing written: would " + plan
	}
	return plan
}
