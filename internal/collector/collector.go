// Package collector is the running appliance: it takes forwarded lines
// from a data path (the XDP program's ring buffer, or a UDP socket),
// assembles them into incidents, logs each incident once, and hands the
// incidents to the cleanup controller when there is a cluster to act on
// (report-only otherwise).
package collector

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"github.com/lastgasp/lastgasp/internal/detect"
	"github.com/lastgasp/lastgasp/internal/filter"
	"github.com/lastgasp/lastgasp/internal/logagg"
	"github.com/lastgasp/lastgasp/internal/netconsole"
	"github.com/lastgasp/lastgasp/internal/pattern"
)

// Source is a data path: it calls emit with every forwarded line until ctx
// is done (then it returns nil) or it fails.
type Source interface {
	Run(ctx context.Context, emit func(filter.Line)) error
}

// Sink receives every incident, once (the cleanup controller's Enqueue).
type Sink func(detect.Incident)

// Config configures a collector.
type Config struct {
	// Source is where lines come from.
	Source Source
	// Patterns is the detector's trigger table (the one the data path
	// matches with). Default pattern.Default().
	Patterns *pattern.Table
	// Sink, if set, receives every incident.
	Sink Sink
	// Plan, if set, says what the sink will do with an incident (the
	// cleanup controller's own Plan); the log line of each incident
	// carries it. Nil: NoPlan.
	Plan func(detect.Incident) string
	// Observe, if set, sees every incident too (metrics, the feed).
	Observe func(detect.Incident)
	// OnLine, if set, sees every forwarded line before it is decoded,
	// with whether its source is allowed (see Allowed): the feed shows
	// those allowed; the spool counts them all, as it wrote them all.
	OnLine func(l filter.Line, allowed bool)
	// Snapshot, if set, receives the decoder's and detector's counters,
	// and how many incidents are open,
	// every tick and at the end: a copy other goroutines may read.
	Snapshot func(Snapshot)
	// Logger receives what the collector does, and each incident, as far
	// as Aggregate lets it.
	Logger *slog.Logger
	// Aggregate, if set, keeps a flood of incidents out of the log: a
	// burst of each kind a minute, the rest counted in one line. The
	// incident's finish is logged apart, and the metrics count each.
	Aggregate *logagg.Aggregator
	// Allowed, if not empty, are the only source networks whose lines
	// are taken (--allow); others are dropped where they enter, before
	// the feed sees them, and counted (the decoder's NotAllowed).
	Allowed []netip.Prefix
	// MemoryBudget bounds, in bytes, what decoding and assembling hold
	// (see detect.Budget). Default detect.DefaultMemoryBudget.
	MemoryBudget int
	// Reload, if set, brings new pattern tables (a reloaded patterns
	// file) for the detector; the data path is given them by the caller.
	Reload <-chan *pattern.Table
}

// NoPlan is the action logged for incidents nothing acts on (no cluster).
const NoPlan = "none: report-only"

// Snapshot is what the collector publishes for scrapes, every tick and
// at the end: a copy other goroutines may read.
type Snapshot struct {
	Decoder       netconsole.Counters
	Detector      detect.Counters
	OpenIncidents int
}

// tickEvery is how often open incidents are checked for closing when no
// line arrives.
const tickEvery = 500 * time.Millisecond

// Run runs the collector until ctx is done.
func Run(ctx context.Context, cfg Config) error {
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	plan := cfg.Plan
	if plan == nil {
		plan = func(detect.Incident) string { return NoPlan }
	}
	logIncident := func(_ string, level slog.Level, msg string, args ...any) {
		log.Log(context.Background(), level, msg, args...)
	}
	if cfg.Aggregate != nil {
		logIncident = cfg.Aggregate.Log
	}
	dc, tc := detect.Budget(cfg.MemoryBudget)
	dc.Allowed = cfg.Allowed
	tc.Patterns = cfg.Patterns
	asm := detect.NewAssembler(dc, tc)
	report := func(incs []detect.Incident) {
		for _, inc := range incs {
			logIncident("incident "+string(inc.Kind), slog.LevelInfo, "incident",
				"id", inc.ID, "source", inc.Source, "kind", inc.Kind, "fatal", inc.Fatal,
				"reason", inc.Reason, "cause", inc.Cause, "module", inc.Module, "task", inc.Task,
				"first", inc.First, "lines", len(inc.Lines),
				"action", plan(inc))
			if cfg.Observe != nil {
				cfg.Observe(inc)
			}
			if cfg.Sink != nil {
				cfg.Sink(inc)
			}
		}
	}

	lines := make(chan filter.Line, 4096)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	srcErr := make(chan error, 1)
	go func() {
		defer close(lines)
		// No line is dropped here, not even once ctx is done: the loop
		// below reads lines until the source returns and closes them,
		// and a line read as the collector stops may be a panic's.
		srcErr <- cfg.Source.Run(ctx, func(l filter.Line) { lines <- l })
	}()

	snapshot := func() {
		if cfg.Snapshot != nil {
			cfg.Snapshot(Snapshot{Decoder: asm.Decoder.Counters(), Detector: asm.Detector.Counters(), OpenIncidents: asm.Detector.Open()})
		}
	}
	defer snapshot()
	tick := time.NewTicker(tickEvery)
	defer tick.Stop()
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				report(asm.Flush())
				if err := <-srcErr; err != nil && !errors.Is(err, context.Canceled) {
					return fmt.Errorf("collector: data path: %w", err)
				}
				return nil
			}
			if cfg.OnLine != nil {
				cfg.OnLine(l, asm.Decoder.Allows(l.Source.Addr()))
			}
			report(asm.Line(l))
		case now := <-tick.C:
			report(asm.Tick(now))
			snapshot()
		case t := <-cfg.Reload:
			asm.Detector.SetPatterns(t)
		}
	}
}
