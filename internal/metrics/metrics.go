// Package metrics exposes a collector's counters to Prometheus, and its
// health. The counters stay where they are kept (the XDP program's
// per-CPU map, the decoder, the detector, the cleanup controller): a
// scrape reads them, so nothing is counted twice.
package metrics

import (
	"errors"
	"fmt"
	"net/http"
	"runtime"
	"runtime/debug"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/lastgasp/lastgasp/internal/cleanup"
	"github.com/lastgasp/lastgasp/internal/detect"
	"github.com/lastgasp/lastgasp/internal/journal"
	"github.com/lastgasp/lastgasp/internal/netconsole"
	"github.com/lastgasp/lastgasp/internal/spool"
	"github.com/lastgasp/lastgasp/internal/udpreceiver"
	"github.com/lastgasp/lastgasp/loader"
)

// Sources are the counters a scrape reads; nil fields are left out.
type Sources struct {
	// DataPath is where lines come from.
	DataPath DataPath
	// Decoder and Detector return the assembler's counters.
	Decoder  func() netconsole.Counters
	Detector func() detect.Counters
	// OpenIncidents returns how many incidents are being assembled.
	OpenIncidents func() int
	// Cleanup returns the cleanup controller's stats, and CleanupPending
	// how many incidents it has not finished.
	Cleanup        func() *cleanup.Stats
	CleanupPending func() int
	// ProbeReach returns whether the liveness probe reaches live nodes'
	// kubelets from here: 1, 0 (none answered), -1 (not checked yet).
	ProbeReach func() int
	// Journal returns the journal's stats, JournalUnfinished how many
	// incidents it holds unfinished, and JournalQueue how many wait to be
	// written.
	Journal           func() journal.Stats
	JournalUnfinished func() int
	JournalQueue      func() int
	// Spool returns the spool's stats.
	Spool func() spool.Stats
	// FeedWatchers returns how many lastgasp tail watchers are connected.
	FeedWatchers func() int
	// NotReady, if set, returns why the collector cannot do its job now
	// (its journal cannot be written), or nil: /readyz says so.
	NotReady func() error
}

// DataPath are the data path's counters; nil fields are left out.
type DataPath struct {
	// XDP returns the XDP program's counters, summed over CPUs (xdp
	// mode).
	XDP func() (loader.Counters, error)
	// RingMalformed returns how many ring buffer records were refused.
	RingMalformed func() uint64
	// Sockets returns the UDP sockets' counters, summed (socket mode, or
	// xdp mode's backstop).
	Sockets func() udpreceiver.Counters
}

// Metrics is the collector's registry.
type Metrics struct {
	notReady    func() error
	reg         *prometheus.Registry
	incidents   *prometheus.CounterVec
	finished    *prometheus.CounterVec
	nodeDeleted prometheus.Histogram
	reloads     *prometheus.CounterVec
	ready       atomic.Bool
	readyGauge  prometheus.GaugeFunc // lastgasp_ready: what readiness says
}

// New registers the collector's metrics.
func New(src Sources) *Metrics {
	m := &Metrics{
		notReady: src.NotReady,
		reg:      prometheus.NewRegistry(),
		incidents: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lastgasp_incidents_total",
			Help: "Incidents assembled, by kind and whether the kernel died.",
		}, []string{"kind", "fatal"}),
		finished: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lastgasp_incidents_finished_total",
			Help: "Incidents finished with by the cleanup controller, by outcome (cleaned up, reported, or why refused).",
		}, []string{"outcome"}),
		nodeDeleted: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "lastgasp_first_packet_to_node_deleted_seconds",
			Help: "Time from the first packet of a fatal incident to its Node deleted: settle time, confirmation, the pods' cleanup, waits for the deletion cap or the API server.",
			// From the 2 s settle time to the 2-minute attempt bound
			// and beyond (a cap or an outage).
			Buckets: []float64{1, 2, 3, 4, 5, 7.5, 10, 15, 20, 30, 45, 60, 120, 300, 600},
		}),
	}
	m.reloads = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "lastgasp_pattern_reloads_total",
		Help: "Patterns file reloads, by result (ok, or rejected: the table in use was kept).",
	}, []string{"result"})
	m.readyGauge = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "lastgasp_ready",
		Help: "1 when the collector is ready (what /readyz says: program attached, caches synced, API server reachable), else 0.",
	}, func() float64 {
		if m.readiness() != nil {
			return 0
		}
		return 1
	})
	m.reg.MustRegister(m.readyGauge, buildInfo())
	m.reg.MustRegister(clientGo.collectors...)
	m.reg.MustRegister(m.incidents, m.finished, m.nodeDeleted, m.reloads, &scrape{src: src},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Incident counts one incident.
func (m *Metrics) Incident(inc detect.Incident) {
	fatal := "false"
	if inc.Fatal {
		fatal = "true"
	}
	m.incidents.WithLabelValues(string(inc.Kind), fatal).Inc()
}

// Finished counts an incident finished with, by outcome.
func (m *Metrics) Finished(outcome string) { m.finished.WithLabelValues(outcome).Inc() }

// NodeDeleted observes the time from an incident's first packet to its
// Node deleted, at.
func (m *Metrics) NodeDeleted(inc detect.Incident, at time.Time) {
	m.nodeDeleted.Observe(at.Sub(inc.First).Seconds())
}

// PatternReload counts a patterns file reload, applied or rejected.
func (m *Metrics) PatternReload(ok bool) {
	result := "ok"
	if !ok {
		result = "rejected"
	}
	m.reloads.WithLabelValues(result).Inc()
}

// SetReady marks the collector ready (program attached, caches synced).
func (m *Metrics) SetReady(ready bool) { m.ready.Store(ready) }

// Handler serves /metrics, /healthz (the process is up) and /readyz
// (ready, or 503).
func (m *Metrics) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok\n")) })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if err := m.readiness(); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ok\n"))
	})
	return mux
}

// errNotReady is readiness's answer before SetReady(true).
var errNotReady = errors.New("not ready")

// readiness returns nil when the collector is ready, else why not.
func (m *Metrics) readiness() error {
	if !m.ready.Load() {
		return errNotReady
	}
	if m.notReady != nil {
		if err := m.notReady(); err != nil {
			return fmt.Errorf("not ready: %w", err)
		}
	}
	return nil
}

// counter is one counter family read from a source's counters of type T:
// its name and help are written here, never derived from a field's name,
// so a renamed field renames no metric.
type counter[T any] struct {
	desc  *prometheus.Desc
	value func(*T) uint64
}

// def is one family's definition: its name, help, and how its value is
// read from the source's counters.
type def[T any] struct {
	name, help string
	value      func(*T) uint64
}

// counters makes the families of one source.
func counters[T any](defs ...def[T]) []counter[T] {
	out := make([]counter[T], len(defs))
	for i, d := range defs {
		out[i] = counter[T]{desc: prometheus.NewDesc(d.name, d.help, nil, nil), value: d.value}
	}
	return out
}

// The families, one a meaning, by source.
var (
	xdpCounters = counters(
		def[loader.Counters]{"lastgasp_xdp_packets_total", "Packets the XDP program saw.", func(c *loader.Counters) uint64 { return c.Packets }},
		def[loader.Counters]{"lastgasp_xdp_passed_packets_total", "Packets the XDP program passed to the kernel's stack (XDP_PASS).", func(c *loader.Counters) uint64 { return c.Passed }},
		def[loader.Counters]{"lastgasp_xdp_dropped_packets_total", "Packets the XDP program dropped (XDP_DROP): netconsole lines judged and not needed, or forwarded.", func(c *loader.Counters) uint64 { return c.Dropped }},
		def[loader.Counters]{"lastgasp_xdp_malformed_packets_total", "Packets with truncated or invalid headers (passed).", func(c *loader.Counters) uint64 { return c.Malformed }},
		def[loader.Counters]{"lastgasp_xdp_fragment_packets_total", "IP fragments: no UDP header to judge (passed, to the backstop socket).", func(c *loader.Counters) uint64 { return c.Fragments }},
		def[loader.Counters]{"lastgasp_xdp_netconsole_datagrams_total", "UDP datagrams to a netconsole port.", func(c *loader.Counters) uint64 { return c.Netconsole }},
		def[loader.Counters]{"lastgasp_xdp_matched_lines_total", "Lines that matched a pattern, forwarded to the ring buffer.", func(c *loader.Counters) uint64 { return c.Matched }},
		def[loader.Counters]{"lastgasp_xdp_context_lines_total", "Lines forwarded to the ring buffer as a burst's context.", func(c *loader.Counters) uint64 { return c.Context }},
		def[loader.Counters]{"lastgasp_xdp_ringbuf_full_lines_total", "Lines to forward that found the ring buffer full (passed, to the backstop socket).", func(c *loader.Counters) uint64 { return c.RingbufFull }},
		def[loader.Counters]{"lastgasp_xdp_truncated_lines_total", "Forwarded lines cut to the ring buffer record's payload.", func(c *loader.Counters) uint64 { return c.Truncated }},
		def[loader.Counters]{"lastgasp_xdp_long_header_lines_total", "netconsole lines whose header does not end in the program's header window (passed, never dropped: to the backstop socket).", func(c *loader.Counters) uint64 { return c.LongHeader }},
		def[loader.Counters]{"lastgasp_xdp_not_local_datagrams_total", "UDP datagrams to a netconsole port but not to an address of this host (routed through it): passed, not judged.", func(c *loader.Counters) uint64 { return c.NotLocal }},
		def[loader.Counters]{"lastgasp_xdp_bursts_total", "Context bursts opened or extended by a match.", func(c *loader.Counters) uint64 { return c.Bursts }},
	)
	socketCounters = counters(
		def[udpreceiver.Counters]{"lastgasp_socket_datagrams_total", "Datagrams read by the UDP sockets (socket mode, or xdp mode's backstop).", func(c *udpreceiver.Counters) uint64 { return c.Datagrams }},
		def[udpreceiver.Counters]{"lastgasp_socket_matched_lines_total", "Lines the sockets forwarded as a pattern match.", func(c *udpreceiver.Counters) uint64 { return c.Matched }},
		def[udpreceiver.Counters]{"lastgasp_socket_context_lines_total", "Lines the sockets forwarded as a burst's context.", func(c *udpreceiver.Counters) uint64 { return c.Context }},
		def[udpreceiver.Counters]{"lastgasp_socket_truncated_lines_total", "Datagrams longer than a forwarded line may be, cut.", func(c *udpreceiver.Counters) uint64 { return c.Truncated }},
		def[udpreceiver.Counters]{"lastgasp_socket_reads_total", "Read calls (recvmmsg) the sockets made: datagrams over reads is the batch size reached.", func(c *udpreceiver.Counters) uint64 { return c.Reads }},
		def[udpreceiver.Counters]{"lastgasp_socket_dropped_datagrams_total", "Datagrams the kernel dropped before the sockets could read them (a full buffer): lost lines.", func(c *udpreceiver.Counters) uint64 { return c.Drops }},
	)
	decoderCounters = counters(
		def[netconsole.Counters]{"lastgasp_decoder_datagrams_total", "Datagrams given to the netconsole decoder.", func(c *netconsole.Counters) uint64 { return c.Datagrams }},
		def[netconsole.Counters]{"lastgasp_decoder_not_allowed_datagrams_total", "Datagrams dropped where they enter: their source is outside --allow.", func(c *netconsole.Counters) uint64 { return c.NotAllowed }},
		def[netconsole.Counters]{"lastgasp_decoder_messages_total", "Kernel messages decoded.", func(c *netconsole.Counters) uint64 { return c.Messages }},
		def[netconsole.Counters]{"lastgasp_decoder_duplicate_messages_total", "Messages dropped as already seen.", func(c *netconsole.Counters) uint64 { return c.Duplicates }},
		def[netconsole.Counters]{"lastgasp_decoder_malformed_datagrams_total", "Datagrams with nothing to decode (empty, a header without text).", func(c *netconsole.Counters) uint64 { return c.Malformed }},
		def[netconsole.Counters]{"lastgasp_decoder_invalid_utf8_messages_total", "Messages whose text was not valid UTF-8 (kept, repaired).", func(c *netconsole.Counters) uint64 { return c.InvalidUTF8 }},
		def[netconsole.Counters]{"lastgasp_decoder_fragments_total", "Extended-format fragments received.", func(c *netconsole.Counters) uint64 { return c.Fragments }},
		def[netconsole.Counters]{"lastgasp_decoder_reassembled_records_total", "Records completed from fragments.", func(c *netconsole.Counters) uint64 { return c.Reassembled }},
		def[netconsole.Counters]{"lastgasp_decoder_expired_fragment_records_total", "Records whose fragments never all came, dropped after the fragment timeout.", func(c *netconsole.Counters) uint64 { return c.FragmentsExpired }},
		def[netconsole.Counters]{"lastgasp_decoder_refused_fragments_total", "Fragments refused: impossible offsets or lengths, or over a bound.", func(c *netconsole.Counters) uint64 { return c.FragmentsRefused }},
		def[netconsole.Counters]{"lastgasp_decoder_joined_lines_total", "Basic-format lines continued from the previous datagram.", func(c *netconsole.Counters) uint64 { return c.Joined }},
	)
	detectorCounters = counters(
		def[detect.Counters]{"lastgasp_detector_lost_lines_total", "Lines of the incidents closed that their senders numbered (netconsole sysdata msgid, kernel 6.17+) and that never arrived: the gaps in each incident's msgids.", func(c *detect.Counters) uint64 { return c.LostLines }},
		def[detect.Counters]{"lastgasp_detector_messages_total", "Messages given to the incident detector.", func(c *detect.Counters) uint64 { return c.Messages }},
		def[detect.Counters]{"lastgasp_detector_triggers_total", "Trigger lines seen (a pattern matched, confirmed, a kernel line).", func(c *detect.Counters) uint64 { return c.Triggers }},
		def[detect.Counters]{"lastgasp_detector_unconfirmed_triggers_total", "Pattern matches a trigger's confirmation refused.", func(c *detect.Counters) uint64 { return c.Unconfirmed }},
		def[detect.Counters]{"lastgasp_detector_not_kernel_triggers_total", "Pattern matches in lines a process wrote to /dev/kmsg (extended format, facility not kernel): context at most.", func(c *detect.Counters) uint64 { return c.NotKernel }},
		def[detect.Counters]{"lastgasp_detector_closed_incidents_total", "Incidents the detector closed and returned.", func(c *detect.Counters) uint64 { return c.Incidents }},
		def[detect.Counters]{"lastgasp_detector_duplicate_incidents_total", "Incidents not returned again: the same id as a recent one.", func(c *detect.Counters) uint64 { return c.Duplicates }},
		def[detect.Counters]{"lastgasp_detector_stray_lines_total", "Lines that came before their incident's trigger, joined to it.", func(c *detect.Counters) uint64 { return c.Strays }},
		def[detect.Counters]{"lastgasp_detector_closed_early_incidents_total", "Incidents closed before their time to make room (the memory budget, the open bound).", func(c *detect.Counters) uint64 { return c.ClosedEarly }},
	)
	journalCounters = counters(
		def[journal.Stats]{"lastgasp_journal_corrupt_records_total", "Journal records found unreadable at start-up (torn by a crash, or damaged): skipped.", func(c *journal.Stats) uint64 { return c.Corrupt }},
		def[journal.Stats]{"lastgasp_journal_resumed_incidents_total", "Unfinished incidents the journal handed back at start-up.", func(c *journal.Stats) uint64 { return c.Resumed }},
		def[journal.Stats]{"lastgasp_journal_rotations_total", "Journal segment rotations, start-up included.", func(c *journal.Stats) uint64 { return c.Rotations }},
		def[journal.Stats]{"lastgasp_journal_write_errors_total", "Journal records that could not be written or synced.", func(c *journal.Stats) uint64 { return c.WriteErrors }},
	)
	spoolCounters = counters(
		def[spool.Stats]{"lastgasp_spool_written_lines_total", "Forwarded lines written to the spool before they were assembled.", func(c *spool.Stats) uint64 { return c.Written }},
		def[spool.Stats]{"lastgasp_spool_replayed_lines_total", "Lines replayed from the spool at start-up.", func(c *spool.Stats) uint64 { return c.Replayed }},
		def[spool.Stats]{"lastgasp_spool_torn_segments_total", "Spool segments whose end was unreadable at start-up (a frame torn by a kill, or damage).", func(c *spool.Stats) uint64 { return c.Torn }},
		def[spool.Stats]{"lastgasp_spool_removed_segments_total", "Spool segments removed once their lines were safe in the journal.", func(c *spool.Stats) uint64 { return c.Removed }},
		def[spool.Stats]{"lastgasp_spool_evicted_lines_total", "Lines evicted from the spool past its bound before they were safe (only a crash would lose them).", func(c *spool.Stats) uint64 { return c.Evicted }},
		def[spool.Stats]{"lastgasp_spool_write_errors_total", "Lines that could not be written to the spool.", func(c *spool.Stats) uint64 { return c.WriteErrors }},
	)
	cleanupCounters = counters(
		def[cleanup.Stats]{"lastgasp_cleanup_not_allowed_incidents_total", "Incidents refused: their source is outside --allow.", func(c *cleanup.Stats) uint64 { return c.NotAllowed.Load() }},
		def[cleanup.Stats]{"lastgasp_cleanup_not_selected_incidents_total", "Fatal incidents refused: their node is not one --node-selector selects (by default, control-plane nodes).", func(c *cleanup.Stats) uint64 { return c.NotSelected.Load() }},
		def[cleanup.Stats]{"lastgasp_cleanup_unknown_source_incidents_total", "Incidents refused: their source is no node's.", func(c *cleanup.Stats) uint64 { return c.UnknownSource.Load() }},
		def[cleanup.Stats]{"lastgasp_cleanup_ambiguous_incidents_total", "Fatal incidents refused: several nodes claim their source.", func(c *cleanup.Stats) uint64 { return c.Ambiguous.Load() }},
		def[cleanup.Stats]{"lastgasp_cleanup_name_mismatch_incidents_total", "Incidents refused: their messages (netconsole userdata) name a node whose addresses are not their source.", func(c *cleanup.Stats) uint64 { return c.NameMismatch.Load() }},
		def[cleanup.Stats]{"lastgasp_cleanup_nonfatal_incidents_total", "Non-fatal incidents reported on their node.", func(c *cleanup.Stats) uint64 { return c.NonFatal.Load() }},
		def[cleanup.Stats]{"lastgasp_cleanup_alive_incidents_total", "Panics refused: the node was alive.", func(c *cleanup.Stats) uint64 { return c.Unconfirmed.Load() }},
		def[cleanup.Stats]{"lastgasp_cleanup_undecided_incidents_total", "Panics finished unconfirmed: neither dead nor alive could be proved in --undecided-for (nothing deleted).", func(c *cleanup.Stats) uint64 { return c.Undecided.Load() }},
		def[cleanup.Stats]{"lastgasp_cleanup_undecided_retries_total", "Confirmations that proved nothing and were tried again later (not API errors).", func(c *cleanup.Stats) uint64 { return c.UndecidedRetries.Load() }},
		def[cleanup.Stats]{"lastgasp_cleanup_forgery_delayed_incidents_total", "Fatal incidents held back by their node's forgery backoff (a panic of that node was refused as alive lately).", func(c *cleanup.Stats) uint64 { return c.ForgeryDelayed.Load() }},
		def[cleanup.Stats]{"lastgasp_cleanup_braked_incidents_total", "Node cleanups refused by the share brake: too many of the cluster's nodes were ended lately (finished unconfirmed).", func(c *cleanup.Stats) uint64 { return c.Braked.Load() }},
		def[cleanup.Stats]{"lastgasp_cleanup_capped_cleanups_total", "Node cleanups delayed by the deletion cap.", func(c *cleanup.Stats) uint64 { return c.Capped.Load() }},
		def[cleanup.Stats]{"lastgasp_cleanup_failed_pods_total", "Pods given their final status (phase Failed, DisruptionTarget).", func(c *cleanup.Stats) uint64 { return c.PodsFailed.Load() }},
		def[cleanup.Stats]{"lastgasp_cleanup_pod_rereads_total", "Pods whose status patch found the cache behind, tried again with a newer copy.", func(c *cleanup.Stats) uint64 { return c.PodRereads.Load() }},
		def[cleanup.Stats]{"lastgasp_cleanup_deleted_pods_total", "Pods this collector deleted.", func(c *cleanup.Stats) uint64 { return c.PodsDeleted.Load() }},
		def[cleanup.Stats]{"lastgasp_cleanup_deleted_nodes_total", "Nodes this collector deleted.", func(c *cleanup.Stats) uint64 { return c.NodesDeleted.Load() }},
		def[cleanup.Stats]{"lastgasp_cleanup_events_total", "Kubernetes Events recorded.", func(c *cleanup.Stats) uint64 { return c.Events.Load() }},
		def[cleanup.Stats]{"lastgasp_cleanup_event_errors_total", "Kubernetes Events that could not be recorded (logged; the cleanup goes on).", func(c *cleanup.Stats) uint64 { return c.EventErrors.Load() }},
		def[cleanup.Stats]{"lastgasp_cleanup_failed_incidents_total", "Incidents finished as failed: the API server refused an action for good (Forbidden, Invalid).", func(c *cleanup.Stats) uint64 { return c.Failed.Load() }},
		def[cleanup.Stats]{"lastgasp_cleanup_api_errors_total", "API calls that failed and were retried.", func(c *cleanup.Stats) uint64 { return c.APIErrors.Load() }},
		def[cleanup.Stats]{"lastgasp_cleanup_record_errors_total", "Incidents finished without their KernelCrash record: it could not be written (logged).", func(c *cleanup.Stats) uint64 { return c.RecordErrors.Load() }},
		def[cleanup.Stats]{"lastgasp_cleanup_storm_held_incidents_total", "Node ends refused in a storm: the same crash on more than --storm-nodes nodes within --storm-window (finished unconfirmed, nothing deleted). Alert on any increase.", func(c *cleanup.Stats) uint64 { return c.Stormed.Load() }},
	)

	ringDesc = prometheus.NewDesc("lastgasp_ringbuf_malformed_records_total", "Ring buffer records that could not be decoded.", nil, nil)
	gauges   = []struct {
		desc  *prometheus.Desc
		value func(Sources) func() int
	}{
		{prometheus.NewDesc("lastgasp_feed_watchers", "lastgasp tail watchers connected to /feed.", nil, nil), func(s Sources) func() int { return s.FeedWatchers }},
		{prometheus.NewDesc("lastgasp_journal_unfinished_incidents", "Incidents taken on and not yet finished with.", nil, nil), func(s Sources) func() int { return s.JournalUnfinished }},
		{prometheus.NewDesc("lastgasp_journal_queue_depth", "Incidents assembled and waiting to be written to the journal.", nil, nil), func(s Sources) func() int { return s.JournalQueue }},
		{prometheus.NewDesc("lastgasp_open_incidents", "Incidents being assembled: lines heard, not yet closed.", nil, nil), func(s Sources) func() int { return s.OpenIncidents }},
		{prometheus.NewDesc("lastgasp_kubelet_probe_reach", "1 when the liveness probe reached a live node's kubelet port at the last check (every 5 minutes), 0 when none of those sampled answered (silence then proves nothing: confirmation rests on the Lease), -1 before the first check.", nil, nil), func(s Sources) func() int { return s.ProbeReach }},
		{prometheus.NewDesc("lastgasp_cleanup_pending_incidents", "Incidents the cleanup controller holds and has not finished (queued, confirming, waiting for the cap or the API server).", nil, nil), func(s Sources) func() int { return s.CleanupPending }},
	}
	scrapeFailed = prometheus.NewDesc("lastgasp_scrape_failed", "1 when a source's counters could not be read at this scrape.", []string{"source"}, nil)
)

// buildInfo is lastgasp_build_info: 1, labelled with what this binary is
// (the module's version, the VCS revision it was built from, the Go
// release), so dashboards can tell collectors of a rollout apart.
func buildInfo() prometheus.Collector {
	version, revision, goVersion := "unknown", "unknown", runtime.Version()
	if bi, ok := debug.ReadBuildInfo(); ok {
		version = bi.Main.Version
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				revision = s.Value
			case "vcs.modified":
				if s.Value == "true" {
					revision += "-modified"
				}
			}
		}
	}
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "lastgasp_build_info",
		Help:        "1, labelled with the lastgasp binary's version, VCS revision and Go release.",
		ConstLabels: prometheus.Labels{"version": version, "revision": revision, "goversion": goVersion},
	})
	g.Set(1)
	return g
}

// scrape is a prometheus.Collector reading the sources' counters.
type scrape struct{ src Sources }

func (s *scrape) Describe(ch chan<- *prometheus.Desc) {
	describe(ch, xdpCounters)
	describe(ch, socketCounters)
	describe(ch, decoderCounters)
	describe(ch, detectorCounters)
	describe(ch, journalCounters)
	describe(ch, spoolCounters)
	describe(ch, cleanupCounters)
	for _, g := range gauges {
		ch <- g.desc
	}
	for _, d := range []*prometheus.Desc{ringDesc, scrapeFailed} {
		ch <- d
	}
}

func (s *scrape) Collect(ch chan<- prometheus.Metric) {
	if s.src.DataPath.XDP != nil {
		c, err := s.src.DataPath.XDP()
		if err != nil {
			ch <- prometheus.MustNewConstMetric(scrapeFailed, prometheus.GaugeValue, 1, "xdp")
		} else {
			collect(ch, xdpCounters, &c)
		}
	}
	if s.src.DataPath.RingMalformed != nil {
		ch <- prometheus.MustNewConstMetric(ringDesc, prometheus.CounterValue, float64(s.src.DataPath.RingMalformed()))
	}
	if s.src.DataPath.Sockets != nil {
		c := s.src.DataPath.Sockets()
		collect(ch, socketCounters, &c)
	}
	if s.src.Decoder != nil {
		c := s.src.Decoder()
		collect(ch, decoderCounters, &c)
	}
	if s.src.Detector != nil {
		c := s.src.Detector()
		collect(ch, detectorCounters, &c)
	}
	if s.src.Journal != nil {
		c := s.src.Journal()
		collect(ch, journalCounters, &c)
	}
	if s.src.Spool != nil {
		c := s.src.Spool()
		collect(ch, spoolCounters, &c)
	}
	if s.src.Cleanup != nil {
		collect(ch, cleanupCounters, s.src.Cleanup())
	}
	for _, g := range gauges {
		if f := g.value(s.src); f != nil {
			ch <- prometheus.MustNewConstMetric(g.desc, prometheus.GaugeValue, float64(f()))
		}
	}
}

func describe[T any](ch chan<- *prometheus.Desc, cs []counter[T]) {
	for _, c := range cs {
		ch <- c.desc
	}
}

func collect[T any](ch chan<- prometheus.Metric, cs []counter[T], v *T) {
	for _, c := range cs {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.CounterValue, float64(c.value(v)))
	}
}
