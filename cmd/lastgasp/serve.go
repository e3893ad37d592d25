package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/lastgasp/lastgasp/internal/cleanup"
	"github.com/lastgasp/lastgasp/internal/collector"
	"github.com/lastgasp/lastgasp/internal/detect"
	"github.com/lastgasp/lastgasp/internal/filter"
	"github.com/lastgasp/lastgasp/internal/journal"
	"github.com/lastgasp/lastgasp/internal/logagg"
	"github.com/lastgasp/lastgasp/internal/metrics"
	"github.com/lastgasp/lastgasp/internal/pattern"
	"github.com/lastgasp/lastgasp/internal/spool"
)

// serve runs the collector until ctx is done. It builds the daemon in the
// order an incident flows, then runs it: the journal (and what it left
// unfinished), the data path, the cluster side, the metrics, the HTTP
// endpoints; then lines → incidents (daemon.take) → cleanup → finish. On
// ctx done it stops the data path, flushes what was assembled, and lets
// cleanups in flight finish for up to --shutdown-grace; what is left stays
// in the journal.
func serve(ctx context.Context, c runConfig, log *slog.Logger) error {
	// SIGHUP reloads the patterns file; from now on, with or without one,
	// it never ends the process.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	d := &daemon{log: log, logFlood: logagg.New(log, 0, 0), dryRun: c.dryRun}
	go d.logFlood.Run(ctx)
	d.patterns.Store(c.patterns)
	d.assembled.Store(&collector.Snapshot{})

	// 1. The journal: what a previous run took on and did not finish;
	// and the spool beside it: the lines a previous run read and may not
	// have assembled into incidents yet.
	var unfinished []detect.Incident
	var replay []filter.Line
	if c.journalDir != "" {
		var err error
		if d.journal, unfinished, err = journal.Open(journal.Config{Dir: c.journalDir}); err != nil {
			return err
		}
		defer d.journal.Close()
		if d.spool, replay, err = spool.Open(spool.Config{Dir: filepath.Join(c.journalDir, "spool")}); err != nil {
			log.Error("spool: cannot be opened; running without it (a crash while an incident is assembled would lose it)", "error", err)
		} else {
			defer d.spool.Close()
		}
		if err := d.journal.Writable(); err != nil {
			log.Error("journal: cannot be written; incidents are acted on without it, /readyz says not ready, retrying every 5 s", "error", err)
			go retryJournal(ctx, d.journal, log)
		}
		log.Info("journal open", "dir", c.journalDir, "unfinished", len(unfinished), "corrupt_records_skipped", d.journal.Stats().Corrupt,
			"spooled_lines_replayed", len(replay))
	}

	// 2. The data path.
	dp, err := openDataPath(ctx, c, c.patterns, log)
	if err != nil {
		return err
	}
	defer dp.Close()

	// 3. The cluster side (nil: report-only); it tells the daemon of
	// each incident it finishes.
	if d.cluster, err = clusterSide(c, log, d.logFlood, d.finished); err != nil {
		return err
	}

	// 4. The metrics, every source named here.
	src := metrics.Sources{
		DataPath:      dp.metricSources(),
		Decoder:       d.decoderCounters,
		Detector:      d.detectorCounters,
		OpenIncidents: d.openIncidents,
		FeedWatchers:  d.feed.Watchers,
	}
	if d.journal != nil {
		src.Journal, src.JournalUnfinished, src.JournalQueue = d.journal.Stats, d.journal.Unfinished, d.journalQueue
		src.NotReady = d.journal.Writable
	}
	if d.spool != nil {
		src.Spool = d.spool.Stats
	}
	if d.cluster != nil {
		src.Cleanup, src.CleanupPending = d.cluster.ctrl.Stats, d.cluster.ctrl.Pending
		if d.cluster.prober != nil {
			src.ProbeReach = func() int { return int(d.cluster.reach.Load()) }
		}
	}
	d.metrics = metrics.New(src)

	// 5. The HTTP endpoints, before anything is started that a failure
	// to listen would have to stop.
	for _, ep := range []struct {
		name, addr string
		handler    http.Handler
	}{{"metrics", c.metricsAddr, d.metrics.Handler()}, {"feed", c.feedAddr, &d.feed}} {
		if ep.addr == "" {
			continue
		}
		ln, err := net.Listen("tcp", ep.addr)
		if err != nil {
			return fmt.Errorf("%s: %w", ep.name, err)
		}
		srv := &http.Server{Handler: ep.handler, ReadHeaderTimeout: 5 * time.Second}
		go srv.Serve(ln)
		defer srv.Close()
		log.Info("serving "+ep.name, "addr", ln.Addr().String())
	}

	// 6. The cluster side runs on its own context: on shutdown it
	// outlives the data path by the grace period. It starts with what
	// the journal left unfinished.
	clusterCtx, stopCluster := context.WithCancel(context.WithoutCancel(ctx))
	defer stopCluster()
	clusterDone := make(chan struct{})
	go func() {
		defer close(clusterDone)
		if d.cluster != nil {
			d.cluster.run(clusterCtx, log)
		}
	}()
	d.resume(unfinished)
	journalDone := make(chan struct{})
	if d.journal != nil {
		d.toJournal = make(chan detect.Incident, 4*journalBatch)
		go func() {
			defer close(journalDone)
			d.journalLoop()
		}()
		go d.trimSpool(ctx)
	} else {
		close(journalDone)
	}
	go func() {
		// Ready once attached (done above) and the caches synced.
		if d.cluster == nil || d.cluster.index.WaitForSync(ctx) == nil {
			d.metrics.SetReady(true)
		}
	}()

	// 7. Pattern reloads: SIGHUP, or the file changed. The data path
	// first; the detector gets the table in the collector's loop.
	reload := make(chan *pattern.Table, 1)
	go watchPatterns(ctx, c.patternsFile, c.patternsData, hup, log, func(t *pattern.Table) bool {
		if err := dp.SetPatterns(t); err != nil {
			log.Error("patterns: the data path refused the new table; keeping the old one", "error", err)
			d.metrics.PatternReload(false)
			return false
		}
		select {
		case reload <- t:
		case <-ctx.Done():
			return false
		}
		d.patterns.Store(t)
		d.metrics.PatternReload(true)
		return true
	}, func() { d.metrics.PatternReload(false) })

	// 8. The collector: lines from the data path (through the spool),
	// assembled into incidents, each handed to d.take.
	log.Info("lastgasp collecting", "mode", c.mode, "ports", c.ports, "interfaces", c.interfaces,
		"patterns", len(c.patterns.Patterns()), "report_only", d.cluster == nil, "dry_run", c.dryRun, "journal", c.journalDir)
	err = collector.Run(readOn(ctx, detect.DefaultSettleTime, log), collector.Config{
		Source: d.spooled(dp, replay), Patterns: c.patterns, Reload: reload, Logger: log,
		Allowed: c.allowed, MemoryBudget: c.memoryBudget,
		Aggregate: d.logFlood, OnLine: d.line, Sink: d.take, Plan: d.plan, Snapshot: d.snapshot,
	})

	// The data path has stopped and what it held is flushed into the
	// journal: give the cleanups in flight their grace period, then stop.
	if d.toJournal != nil {
		close(d.toJournal)
	}
	<-journalDone
	if d.cluster != nil {
		drain(d.cluster.ctrl, c.shutdownGrace, log)
	}
	stopCluster()
	<-clusterDone
	if d.journal != nil && d.journal.Unfinished() > 0 {
		log.Info("stopping with unfinished incidents; the next start resumes them", "unfinished", d.journal.Unfinished())
	}
	return err
}

// journalRetryEvery is how often a journal that could not be written at
// start is tried again.
const journalRetryEvery = 5 * time.Second

// retryJournal tries to make the journal writable again until it is, or
// ctx is done.
func retryJournal(ctx context.Context, jr *journal.Journal, log *slog.Logger) {
	every(ctx, journalRetryEvery, func() bool {
		if jr.Retry() != nil {
			return false
		}
		log.Info("journal: writable again")
		return true
	})
}

// readOn returns a context done settle after ctx is: on SIGTERM the data
// path is read for the settle time more before what was assembled is
// flushed, so an Oops whose panic line is on its way is not closed as
// non-fatal for want of it.
func readOn(ctx context.Context, settle time.Duration, log *slog.Logger) context.Context {
	data, stop := context.WithCancel(context.WithoutCancel(ctx))
	context.AfterFunc(ctx, func() {
		log.Info("stopping: reading on for the settle time, then flushing", "settle", settle.String())
		time.AfterFunc(settle, stop)
	})
	return data
}

// drain waits until the controller has nothing pending, or grace passes.
func drain(ctrl *cleanup.Controller, grace time.Duration, log *slog.Logger) {
	if ctrl.Pending() == 0 {
		return
	}
	log.Info("shutting down: letting cleanups in flight finish", "pending", ctrl.Pending(), "grace", grace.String())
	deadline := time.Now().Add(grace)
	for ctrl.Pending() > 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
}
