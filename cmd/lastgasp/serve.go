package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/lastgasp/lastgasp/internal/cleanup"
	"github.com/lastgasp/lastgasp/internal/collector"
	"github.com/lastgasp/lastgasp/internal/detect"
	"github.com/lastgasp/lastgasp/internal/feed"
	"github.com/lastgasp/lastgasp/internal/filter"
	"github.com/lastgasp/lastgasp/internal/journal"
	"github.com/lastgasp/lastgasp/internal/liveness"
	"github.com/lastgasp/lastgasp/internal/metrics"
	"github.com/lastgasp/lastgasp/internal/netconsole"
	"github.com/lastgasp/lastgasp/internal/nodeindex"
	"github.com/lastgasp/lastgasp/internal/pattern"
	"github.com/lastgasp/lastgasp/internal/udpreceiver"
	"github.com/lastgasp/lastgasp/loader"
	"github.com/lastgasp/lastgasp/ringbuf"
)

// serve runs the collector until ctx is done, in this order: the journal
// (and what it left unfinished), the data path, the cluster side, the
// metrics, then lines → incidents → cleanup. On ctx done it stops the data
// path, flushes what was assembled, and lets cleanups in flight finish
// for up to --shutdown-grace; what is left stays in the journal.
func serve(ctx context.Context, c runConfig, log *slog.Logger) error {
	// SIGHUP reloads the patterns file; from now on, with or without one,
	// it never ends the process.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	table := c.patterns
	var src metrics.Sources

	// 1. The journal: what a previous run took on and did not finish.
	var jr *journal.Journal
	var unfinished []detect.Incident
	if c.journalDir != "" {
		var err error
		if jr, unfinished, err = journal.Open(journal.Config{Dir: c.journalDir}); err != nil {
			return err
		}
		defer jr.Close()
		src.Journal = func() any { return jr.Stats() }
		src.JournalUnfinished = jr.Unfinished
		log.Info("journal open", "dir", c.journalDir, "unfinished", len(unfinished), "corrupt_records_skipped", jr.Stats().Corrupt)
	}

	// 2. The data path.
	dp, err := openDataPath(ctx, c, table, log, &src)
	if err != nil {
		return err
	}
	defer dp.close()

	// 3. The cluster side (nil: report-only), and the metrics that
	// watch it.
	cl, err := clusterSide(c, log)
	if err != nil {
		return err
	}
	var counters atomic.Pointer[assemblerCounters]
	counters.Store(&assemblerCounters{})
	src.Decoder = func() any { return counters.Load().decoder }
	src.Detector = func() any { return counters.Load().detector }
	if cl != nil {
		src.Cleanup = func() any { return cl.ctrl.Stats() }
	}
	var fd feed.Feed // what lastgasp tail watches
	src.FeedWatchers = fd.Watchers
	m := metrics.New(src)
	var current atomic.Pointer[pattern.Table]
	current.Store(table)

	// finish records an incident finished with: in the journal, the
	// metrics and the log.
	finish := func(inc detect.Incident, outcome, node string, at time.Time) {
		if jr != nil {
			if err := jr.Done(inc.ID, outcome); err != nil {
				log.Error("journal: could not mark an incident done; it will be resumed (harmlessly) after a restart", "incident", inc.ID, "error", err)
			}
		}
		m.Finished(outcome)
		fd.Finish(inc, outcome)
		log.Info("incident finished", "incident", inc.ID, "source", inc.Source, "node", node,
			"kind", inc.Kind, "fatal", inc.Fatal, "reason", inc.Reason, "cause", inc.Cause,
			"outcome", outcome, "since_first_packet", at.Sub(inc.First).Round(time.Millisecond).String())
	}
	// take is where each incident goes: into the journal first, then to
	// the cleanup controller.
	take := func(inc detect.Incident) {
		if jr != nil {
			if err := jr.Begin(inc); err != nil {
				log.Error("journal: incident not recorded; acting on it anyway", "incident", inc.ID, "error", err)
			}
		}
		if cl == nil {
			finish(inc, "report-only", "", time.Now())
			return
		}
		cl.ctrl.Enqueue(inc)
	}

	// The HTTP endpoints, before anything is started that a failure to
	// listen would have to stop.
	for _, ep := range []struct {
		name, addr string
		handler    http.Handler
	}{{"metrics", c.metricsAddr, m.Handler()}, {"feed", c.feedAddr, &fd}} {
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

	// The cluster side runs on its own context: on shutdown it outlives
	// the data path by the grace period.
	clusterCtx, stopCluster := context.WithCancel(context.WithoutCancel(ctx))
	defer stopCluster()
	clusterDone := make(chan struct{})
	if cl != nil {
		cl.onDone = func(inc detect.Incident, outcome cleanup.Outcome, node string, at time.Time) {
			if outcome == cleanup.OutcomeCleanedUp && !c.dryRun {
				m.NodeDeleted(inc, at)
			}
			finish(inc, string(outcome), node, at)
		}
		go func() {
			defer close(clusterDone)
			cl.run(clusterCtx, log)
		}()
	} else {
		close(clusterDone)
	}
	for _, inc := range unfinished {
		if cl == nil {
			log.Warn("report-only: an unfinished incident from the journal stays there", "incident", inc.ID, "source", inc.Source)
			continue
		}
		log.Info("resuming an unfinished incident from the journal", "incident", inc.ID, "source", inc.Source, "kind", inc.Kind, "fatal", inc.Fatal)
		cl.ctrl.Enqueue(inc)
	}

	go func() {
		// Ready once attached (done above) and the caches synced.
		if cl == nil || cl.index.WaitForSync(ctx) == nil {
			m.SetReady(true)
		}
	}()

	// Pattern reloads: SIGHUP, or the file changed.
	reload := make(chan *pattern.Table, 1)
	go watchPatterns(ctx, c.patternsFile, c.patternsData, hup, log, func(t *pattern.Table) bool {
		if err := dp.setPatterns(t); err != nil {
			log.Error("patterns: the data path refused the new table; keeping the old one", "error", err)
			m.PatternReload(false)
			return false
		}
		select {
		case reload <- t: // to the detector, in the collector's loop
		case <-ctx.Done():
			return false
		}
		current.Store(t)
		m.PatternReload(true)
		return true
	}, func() { m.PatternReload(false) })

	log.Info("lastgasp collecting", "mode", c.mode, "ports", c.ports, "interfaces", c.interfaces,
		"patterns", len(table.Patterns()), "report_only", cl == nil, "dry_run", c.dryRun, "journal", c.journalDir)
	err = collector.Run(ctx, collector.Config{
		Source: dp.source, Patterns: table, Sink: take, ReportOnly: cl == nil, Logger: log, Reload: reload,
		Observe: func(inc detect.Incident) { m.Incident(inc); fd.Incident(inc) },
		OnLine:  func(l filter.Line) { fd.Line(l, current.Load()) },
		Snapshot: func(d netconsole.Counters, t detect.Counters) {
			counters.Store(&assemblerCounters{decoder: d, detector: t})
		},
	})

	// The data path has stopped and what it held is flushed: give the
	// cleanups in flight their grace period, then stop.
	if cl != nil {
		drain(cl.ctrl, c.shutdownGrace, log)
	}
	stopCluster()
	<-clusterDone
	if jr != nil && jr.Unfinished() > 0 {
		log.Info("stopping with unfinished incidents; the next start resumes them", "unfinished", jr.Unfinished())
	}
	return err
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

// assemblerCounters is a snapshot the collector publishes for scrapes.
type assemblerCounters struct {
	decoder  netconsole.Counters
	detector detect.Counters
}

// dataPath is a running data path.
type dataPath struct {
	source      collector.Source
	setPatterns func(*pattern.Table) error
	close       func()
}

// openDataPath loads and attaches the XDP program, or opens the sockets.
// In xdp mode with --forward drop it also opens the backstop sockets:
// the program passes up what it cannot put in the ring buffer (full) or
// cannot judge (IP fragments), and nothing else of the netconsole ports,
// so they see no line twice.
func openDataPath(ctx context.Context, c runConfig, table *pattern.Table, log *slog.Logger, src *metrics.Sources) (*dataPath, error) {
	var sockets []*udpreceiver.Receiver
	var filters []*filter.Filter
	closeSockets := func() {
		for _, rx := range sockets {
			rx.Close()
		}
	}
	// listen opens a socket a port; forwardAll for the backstop, whose
	// lines the kernel program has judged already.
	listen := func(addr string, forwardAll bool) error {
		for _, port := range c.ports {
			f := filter.New(filter.Config{Patterns: table, ContextLines: c.contextLines, NoContext: c.contextLines == 0, ForwardAll: forwardAll})
			rx, err := udpreceiver.Listen(ctx, net.JoinHostPort(addr, strconv.Itoa(int(port))), 0, f)
			if err != nil {
				return err
			}
			sockets, filters = append(sockets, rx), append(filters, f)
		}
		return nil
	}
	sumSockets := func() any {
		var sum udpreceiver.Counters
		for _, rx := range sockets {
			c := rx.Counters()
			sum.Datagrams += c.Datagrams
			sum.Matched += c.Matched
			sum.Context += c.Context
			sum.Truncated += c.Truncated
			sum.Drops += c.Drops
		}
		return sum
	}
	setFilters := func(t *pattern.Table) {
		for _, f := range filters {
			f.SetPatterns(t)
		}
	}

	if c.mode == "socket" {
		if err := listen(c.listen, false); err != nil {
			closeSockets()
			return nil, err
		}
		var sources collector.Sources
		for _, rx := range sockets {
			sources = append(sources, rx)
		}
		src.Sockets = sumSockets
		return &dataPath{
			source:      sources,
			setPatterns: func(t *pattern.Table) error { setFilters(t); return nil },
			close:       closeSockets,
		}, nil
	}

	prog, err := loader.Load(loader.Config{
		Ports:        c.ports,
		Patterns:     table,
		ContextLines: uint32(c.contextLines),
		NoContext:    c.contextLines == 0,
		ForwardPass:  c.forwardPass,
		RingBufSize:  c.ringBytes,
		PinPath:      c.pinPath,
		Logger:       log,
	})
	if err != nil {
		return nil, err
	}
	for _, ifname := range c.interfaces {
		if _, err := prog.Attach(ifname, c.xdpMode); err != nil {
			prog.Close()
			return nil, err
		}
	}
	rd, err := ringbuf.NewReader(prog.Events())
	if err != nil {
		prog.Close()
		return nil, err
	}
	closeAll := func() { rd.Close(); closeSockets(); prog.Close() }
	sources := collector.Sources{rd}
	if c.backstop && !c.forwardPass {
		if err := listen(c.listen, true); err != nil {
			closeAll()
			return nil, fmt.Errorf("backstop socket (--backstop=false to go without): %w", err)
		}
		for _, rx := range sockets {
			sources = append(sources, rx)
		}
		src.Sockets = sumSockets
	}
	src.XDP = func() (any, error) { return prog.Counters() }
	src.RingMalformed = rd.Malformed
	return &dataPath{
		source: sources,
		setPatterns: func(t *pattern.Table) error {
			// The kernel first: if it refuses, it gets the table in
			// use back, and the backstop filters never change.
			if err := prog.SetPatterns(t); err != nil {
				if rerr := prog.SetPatterns(prog.Config().Patterns); rerr != nil {
					return errors.Join(err, fmt.Errorf("restoring the table in use: %w", rerr))
				}
				return err
			}
			setFilters(t)
			return nil
		},
		close: closeAll,
	}, nil
}

// cluster is the cleanup controller and what it needs.
type cluster struct {
	ctrl    *cleanup.Controller
	index   *nodeindex.Index
	factory informers.SharedInformerFactory
	// onDone is called for each incident finished with; set before run.
	onDone func(detect.Incident, cleanup.Outcome, string, time.Time)
}

// run starts the informers and the controller, until ctx is done.
func (cl *cluster) run(ctx context.Context, log *slog.Logger) {
	cl.factory.Start(ctx.Done())
	defer cl.factory.Shutdown()
	if err := cl.ctrl.Run(ctx, 4); err != nil && !errors.Is(err, context.Canceled) {
		log.Error("cleanup controller stopped", "error", err)
	}
}

// clusterSide builds the cleanup controller, or returns nil for
// report-only: no kubeconfig and not in a cluster, or asked.
func clusterSide(c runConfig, log *slog.Logger) (*cluster, error) {
	if c.reportOnlyArg {
		log.Info("report-only (--report-only): incidents are logged, nothing is written to a cluster")
		return nil, nil
	}
	var cfg *rest.Config
	var err error
	if c.kubeconfig != "" {
		cfg, err = clientcmd.BuildConfigFromFlags("", c.kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("kubeconfig %s: %w", c.kubeconfig, err)
		}
	} else if cfg, err = rest.InClusterConfig(); err != nil {
		log.Info("report-only: no --kubeconfig and not running in a cluster; incidents are logged, nothing is written")
		return nil, nil
	}
	cfg.QPS, cfg.Burst = float32(c.qps), c.burst
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	cl := &cluster{factory: informers.NewSharedInformerFactory(cs, 0)}
	if cl.index, err = nodeindex.New(cl.factory); err != nil {
		return nil, err
	}
	var prober *liveness.Prober
	if c.confirm {
		prober = &liveness.Prober{Client: cs, Port: c.kubeletPort}
	} else {
		log.Warn("--confirm=none: a forged panic line can delete a live node")
	}
	host, _ := os.Hostname()
	cl.ctrl = cleanup.New(cleanup.Config{
		Client: cs, Index: cl.index, Prober: prober, Safety: c.safety,
		AllowedSources: c.allowed, MaxNodeDeletionsPerMinute: c.maxDeletions,
		DryRun: c.dryRun, Instance: host, Logger: log,
		PodAction: c.podAction, KeepNode: c.keepNode, TaintNonFatal: c.taintNonFatal,
		OnDone: func(inc detect.Incident, o cleanup.Outcome, node string, at time.Time) { cl.onDone(inc, o, node, at) },
	})
	return cl, nil
}

// patternsPollEvery is how often the patterns file is checked for a
// change (a ConfigMap update swaps a symlink: polling the content sees
// it, where a watch on the file would not).
const patternsPollEvery = 2 * time.Second

// watchPatterns reloads the patterns file on SIGHUP (from hup) and when
// its content changes from last, and hands each valid new table to apply;
// a file that does not parse is logged, and the table in use kept.
// Without a file, a SIGHUP is logged and does nothing.
func watchPatterns(ctx context.Context, path string, last []byte, hup <-chan os.Signal, log *slog.Logger, apply func(*pattern.Table) bool, rejected func()) {
	tick := time.NewTicker(patternsPollEvery)
	defer tick.Stop()
	for {
		why := "the file changed"
		select {
		case <-ctx.Done():
			return
		case <-hup:
			if path == "" {
				log.Info("SIGHUP: there is no --patterns file to reload")
				continue
			}
			why = "SIGHUP"
		case <-tick.C:
			if path == "" {
				continue
			}
			if now, err := os.ReadFile(path); err != nil || bytes.Equal(now, last) {
				continue
			}
		}
		t, data, err := pattern.LoadFile(path)
		if data != nil {
			last = data
		}
		if err != nil {
			log.Error("patterns file rejected; the table in use is kept", "why", why, "error", err)
			rejected()
			continue
		}
		if apply(t) {
			log.Info("patterns reloaded", "why", why, "patterns", len(t.Patterns()))
		}
	}
}
