package main

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/lastgasp/lastgasp/internal/cleanup"
	"github.com/lastgasp/lastgasp/internal/collector"
	"github.com/lastgasp/lastgasp/internal/detect"
	"github.com/lastgasp/lastgasp/internal/feed"
	"github.com/lastgasp/lastgasp/internal/filter"
	"github.com/lastgasp/lastgasp/internal/journal"
	"github.com/lastgasp/lastgasp/internal/logagg"
	"github.com/lastgasp/lastgasp/internal/metrics"
	"github.com/lastgasp/lastgasp/internal/netconsole"
	"github.com/lastgasp/lastgasp/internal/pattern"
	"github.com/lastgasp/lastgasp/internal/spool"
)

// daemon is what an incident passes through in a running collector. Its
// methods are the steps, in the order an incident takes them:
//
//	spooled     each forwarded line is on disk before it is assembled
//	line        the collector assembles it (shown on the feed)
//	take        the collector assembled an incident: counted, on the feed
//	journalLoop written to disk (a group commit) before anything acts on it
//	toCluster   handed to the cleanup controller (or finished: report-only)
//	finished    the controller is done with it
//	finish      recorded as done: journal, metrics, feed, one log line
type daemon struct {
	log      *slog.Logger
	logFlood *logagg.Aggregator // for what a flood of forgeries makes
	journal  *journal.Journal   // nil: no --journal
	spool    *spool.Spool       // nil: no --journal
	cluster  *cluster           // nil: report-only
	metrics  *metrics.Metrics
	feed     feed.Feed // what lastgasp tail watches
	dryRun   bool

	// toJournal queues incidents for journalLoop; journaling counts
	// those taken and not yet handed on, so the spool knows when what it
	// holds is safe in the journal.
	toJournal  chan detect.Incident
	journaling atomic.Int64
	// assembledLines counts the lines handed to the assembler, replayed
	// ones first: the spool's sequence numbers.
	assembledLines atomic.Uint64

	// patterns is the table in use, for naming a line's pattern on the
	// feed; assembled is the decoder's and detector's last counters, for
	// scrapes. Both are written by one goroutine and read by others.
	patterns  atomic.Pointer[pattern.Table]
	assembled atomic.Pointer[collector.Snapshot]
}

// spooled is the collector's data path with the spool in front: the
// lines a previous run spooled and may not have assembled are replayed
// first, then each line read is written to the spool before it is handed
// on to be assembled.
func (d *daemon) spooled(dp collector.Source, replay []filter.Line) collector.Source {
	if d.spool == nil {
		return dp
	}
	return sourceFunc(func(ctx context.Context, emit func(filter.Line)) error {
		for _, l := range replay {
			emit(l)
		}
		return dp.Run(ctx, func(l filter.Line) {
			if _, err := d.spool.Write(l); err != nil {
				// A full disk fails every line: a burst a minute, counted.
				d.logFlood.Log("spool write", slog.LevelError, "spool: a line is not on disk; a crash before its incident is journaled would lose it", "error", err)
			}
			emit(l)
		})
	})
}

// sourceFunc is a collector.Source.
type sourceFunc func(ctx context.Context, emit func(filter.Line)) error

func (f sourceFunc) Run(ctx context.Context, emit func(filter.Line)) error { return f(ctx, emit) }

// line is each line the collector is about to assemble or drop: counted
// for the spool (which wrote it, allowed or not: a line dropped is done
// with as surely as one assembled) and, if allowed, shown on the feed,
// named by its pattern.
func (d *daemon) line(l filter.Line, allowed bool) {
	d.assembledLines.Add(1)
	if allowed {
		d.feed.Line(l, d.patterns.Load())
	}
}

// spoolKeep is how long a spooled line stays after it was written, at
// least: longer than an incident stays open (its quiet period and settle
// time, the ticks between), so a line is trimmed only after the incident
// it joined was closed and journaled. A source that keeps one incident
// open longer (a trigger every few seconds for a minute) would lose its
// oldest lines to a crash, not its newest.
const spoolKeep = time.Minute

// trimSpool removes, every second until ctx is done, the spool's segments
// whose lines are all assembled, older than spoolKeep, while no incident
// waits for the journal.
func (d *daemon) trimSpool(ctx context.Context) {
	if d.spool == nil {
		return
	}
	every(ctx, time.Second, func() bool {
		d.spool.Trim(func(seg spool.Segment) bool {
			return seg.LastSeq <= d.assembledLines.Load() && d.journaling.Load() == 0 && time.Since(seg.LastWrite) > spoolKeep
		})
		return false
	})
}

// every calls fn every period until it returns true or ctx is done.
func every(ctx context.Context, period time.Duration, fn func() (done bool)) {
	tick := time.NewTicker(period)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			if fn() {
				return
			}
		}
	}
}

// take is where the collector hands each incident it assembles, on its
// own goroutine: nothing here waits for a disk.
func (d *daemon) take(inc detect.Incident) {
	d.metrics.Incident(inc)
	d.feed.Incident(inc)
	if d.journal == nil {
		d.toCluster(inc)
		return
	}
	d.journaling.Add(1)
	d.toJournal <- inc
}

// journalBatch bounds the incidents written with one fsync.
const journalBatch = 512

// journalLoop writes the incidents take queues to the journal, as many
// as are waiting with one fsync (a group commit: a flood of forged
// incidents costs one sync a batch, not one each, and never the
// collector's loop), then hands those newly taken on to the cluster. An
// incident the journal already holds unfinished (resumed) or finished
// lately (assembled again from replayed lines) is not acted on twice. It
// returns when toJournal is closed and drained.
func (d *daemon) journalLoop() {
	for inc := range d.toJournal {
		batch := []detect.Incident{inc}
	more:
		for len(batch) < journalBatch {
			select {
			case next, ok := <-d.toJournal:
				if !ok {
					break more
				}
				batch = append(batch, next)
			default:
				break more
			}
		}
		// On error, taken still leaves out what the journal knows of
		// (resumed, or finished lately): those are never acted on twice.
		taken, err := d.journal.BeginAll(batch)
		if err != nil {
			d.log.Error("journal: incidents not recorded; acting on them anyway", "incidents", len(taken), "error", err)
		}
		for _, inc := range taken {
			d.toCluster(inc)
		}
		d.journaling.Add(-int64(len(batch)))
	}
}

// toCluster hands the incident to the cleanup controller, or, with no
// cluster to act on, finishes it at once.
func (d *daemon) toCluster(inc detect.Incident) {
	if d.cluster == nil {
		d.finish(inc, "report-only", "", time.Now())
		return
	}
	d.cluster.ctrl.Enqueue(inc)
}

// finished is the cleanup controller's OnDone: an incident it is done
// with, how, the Node it was about ("" when none was found) and when.
func (d *daemon) finished(inc detect.Incident, outcome cleanup.Outcome, node string, at time.Time) {
	if outcome == cleanup.OutcomeCleanedUp && !d.dryRun {
		d.metrics.NodeDeleted(inc, at)
	}
	d.finish(inc, string(outcome), node, at)
}

// finish records an incident as finished with: in the journal, the
// metrics, the feed and the log (one line an incident).
func (d *daemon) finish(inc detect.Incident, outcome, node string, at time.Time) {
	if d.journal != nil {
		if err := d.journal.Done(inc.ID, outcome); err != nil {
			d.log.Error("journal: could not mark an incident done; it will be resumed (harmlessly) after a restart", "incident", inc.ID, "error", err)
		}
	}
	d.metrics.Finished(outcome)
	d.feed.Finish(inc, outcome)
	args := []any{"incident", inc.ID, "source", inc.Source, "node", node,
		"kind", inc.Kind, "fatal", inc.Fatal, "reason", inc.Reason, "cause", inc.Cause,
		"outcome", outcome, "since_first_packet", at.Sub(inc.First).Round(time.Millisecond).String()}
	if node == "" {
		// About no node (its source is no node's, or not allowed): what a
		// forgery flood makes, logged a burst a minute.
		d.logFlood.Log("incident finished "+outcome, slog.LevelInfo, "incident finished", args...)
		return
	}
	d.log.Info("incident finished", args...)
}

// resume hands the incidents a previous run left unfinished in the
// journal to the cleanup controller.
func (d *daemon) resume(unfinished []detect.Incident) {
	for _, inc := range unfinished {
		if d.cluster == nil {
			d.log.Warn("report-only: an unfinished incident from the journal stays there", "incident", inc.ID, "source", inc.Source)
			continue
		}
		d.log.Info("resuming an unfinished incident from the journal", "incident", inc.ID, "source", inc.Source, "kind", inc.Kind, "fatal", inc.Fatal)
		d.cluster.ctrl.Resume(inc)
	}
}

// snapshot publishes the assembler's counters for scrapes.
func (d *daemon) snapshot(snap collector.Snapshot) { d.assembled.Store(&snap) }

// plan says what will be done with an incident (the collector logs it).
func (d *daemon) plan(inc detect.Incident) string {
	if d.cluster == nil {
		return collector.NoPlan
	}
	return d.cluster.ctrl.Plan(inc)
}

// decoderCounters and detectorCounters are the assembler's last
// published counters, for scrapes.
func (d *daemon) decoderCounters() netconsole.Counters { return d.assembled.Load().Decoder }
func (d *daemon) detectorCounters() detect.Counters    { return d.assembled.Load().Detector }
func (d *daemon) openIncidents() int                   { return d.assembled.Load().OpenIncidents }

// journalQueue is how many incidents wait to be journaled.
func (d *daemon) journalQueue() int { return int(d.journaling.Load()) }
