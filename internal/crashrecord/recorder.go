package crashrecord

import (
	"context"
	"log/slog"
	"slices"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

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
// done, unless it is pending (cleanup.OutcomePending): then f's final
// outcome replaces it. f with no Node (a resumed incident whose Node is
// gone) only finishes a pending record, if there is one.
func (r *Recorder) Record(ctx context.Context, f cleanup.Finished) error {
	log := r.Logger
	if log == nil {
		log = slog.Default()
	}
	kc := FromFinished(f, r.Instance)
	if f.Node == "" {
		return r.finishPending(ctx, log, kc, f)
	}
	created, err := r.Store.Create(ctx, kc)
	if err != nil {
		return err
	}
	if !created && !Pending(kc.Spec.Outcome) {
		return r.finishPending(ctx, log, kc, f)
	}
	log.Info("kernel crash recorded", "incident", kc.Name, "node", f.Node, "signature", kc.Spec.Signature.ID,
		"title", kc.Spec.Signature.Title, "outcome", f.Outcome, "pods", kc.Spec.PodCount, "new", created)
	return nil
}

// Pending reports whether a record's outcome is pending: its node's
// cleanup under way, or cut short by the collector's end.
func Pending(outcome string) bool { return strings.HasPrefix(outcome, cleanup.OutcomePending) }

// finishPending replaces the pending record of kc's incident, if there is
// one, by the final one (f's outcome): kc itself when f is about the Node
// the pending record names; else (the Node gone, or another of its name
// since: the collector that wrote it deleted it and was killed) the
// pending record with the outcome it was pending to, the Node deleted by
// f.At at the latest.
func (r *Recorder) finishPending(ctx context.Context, log *slog.Logger, kc *KernelCrash, f cleanup.Finished) error {
	old, err := r.Store.Get(ctx, kc.Name)
	switch {
	case apierrors.IsNotFound(err):
		return nil // none: the run before ended nothing
	case err != nil:
		return err
	case !Pending(old.Spec.Outcome):
		return nil // final already
	}
	final := *old // shallow: only whole fields are replaced
	if f.Node != "" && f.NodeUID == old.Spec.Node.UID {
		final.Spec = kc.Spec
		// The pods the pending record names were ended, some perhaps
		// before a restart whose cleanup no longer found them.
		final.Spec.Pods, final.Spec.PodCount = unionPods(old.Spec.Pods, kc.Spec.Pods), max(old.Spec.PodCount, kc.Spec.PodCount)
		final.Spec.PodCount = max(final.Spec.PodCount, len(final.Spec.Pods))
		if final.Spec.ConfirmedDeadAt == nil {
			final.Spec.ConfirmedDeadAt = old.Spec.ConfirmedDeadAt
		}
		final.Spec.Storm = final.Spec.Storm || old.Spec.Storm
	} else {
		final.Spec.Outcome = strings.TrimPrefix(old.Spec.Outcome, cleanup.OutcomePending)
		if final.Spec.NodeDeletedAt == nil {
			t := metav1.NewTime(f.At)
			final.Spec.NodeDeletedAt = &t
		}
		final.Spec.ReportedBy = r.Instance
	}
	if err := r.Store.Replace(ctx, &final); err != nil {
		return err
	}
	log.Info("kernel crash recorded", "incident", kc.Name, "node", final.Spec.Node.Name, "signature", final.Spec.Signature.ID,
		"title", final.Spec.Signature.Title, "outcome", final.Spec.Outcome, "pods", final.Spec.PodCount, "was", old.Spec.Outcome)
	return nil
}

// unionPods returns a's pods and those of b not in a, at most MaxPods.
func unionPods(a, b []cleanup.EndedPod) []cleanup.EndedPod {
	out := slices.Clone(a)
	for _, p := range b {
		if !slices.ContainsFunc(out, func(q cleanup.EndedPod) bool { return q.Namespace == p.Namespace && q.Name == p.Name && q.UID == p.UID }) {
			out = append(out, p)
		}
	}
	if len(out) > MaxPods {
		out = out[:MaxPods]
	}
	return out
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
