package crashrecord

import (
	"context"
	"log/slog"
	"time"

	"github.com/lastgasp/lastgasp/internal/cleanup"
)

// Recorder writes the record of each incident the cleanup controller
// finishes with: its Record is cleanup.Config.Record.
type Recorder struct {
	Store *Store
	// Instance names this collector in the records (reportedBy).
	Instance string
	// Logger receives a line for each record written. Default
	// slog.Default().
	Logger *slog.Logger
}

// Record writes f's record; one there already (another collector's) is
// done.
func (r *Recorder) Record(ctx context.Context, f cleanup.Finished) error {
	kc := FromFinished(f, r.Instance)
	created, err := r.Store.Create(ctx, kc)
	if err != nil {
		return err
	}
	log := r.Logger
	if log == nil {
		log = slog.Default()
	}
	log.Info("kernel crash recorded", "incident", kc.Name, "node", f.Node, "signature", kc.Spec.Signature.ID,
		"title", kc.Spec.Signature.Title, "outcome", f.Outcome, "pods", kc.Spec.PodCount, "new", created)
	return nil
}

// PruneEvery is how often Prune runs.
const PruneEvery = time.Hour

// Prune deletes the records older than retention now and then (every
// PruneEvery, first at once) until ctx is done.
func (r *Recorder) Prune(ctx context.Context, retention time.Duration) {
	log := r.Logger
	if log == nil {
		log = slog.Default()
	}
	for {
		n, err := r.Store.Prune(ctx, retention, time.Now())
		switch {
		case err != nil && ctx.Err() == nil:
			log.Warn("pruning old kernel crash records failed; trying again later", "error", err)
		case n > 0:
			log.Info("old kernel crash records pruned", "deleted", n, "retention", retention.String())
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(PruneEvery):
		}
	}
}
