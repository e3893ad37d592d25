// Package metrics exposes a collector's counters to Prometheus, and its
// health. The counters stay where they are kept (the XDP program's
// per-CPU map, the decoder, the detector, the cleanup controller): a
// scrape reads them, so nothing is counted twice.
package metrics

import (
	"net/http"
	"reflect"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/lastgasp/lastgasp/internal/detect"
)

// Sources are the counters a scrape reads; nil fields are left out.
type Sources struct {
	// DataPath is where lines come from.
	DataPath DataPath
	// Decoder and Detector return the assembler's counters.
	Decoder  func() any
	Detector func() any
	// Cleanup returns the cleanup controller's stats (*cleanup.Stats).
	Cleanup func() any
	// Journal returns the journal's stats (journal.Stats), and
	// JournalUnfinished how many incidents it holds unfinished.
	Journal           func() any
	JournalUnfinished func() int
	// FeedWatchers returns how many lastgasp tail watchers are connected.
	FeedWatchers func() int
	// NotReady, if set, returns why the collector cannot do its job now
	// (its journal cannot be written), or nil: /readyz says so.
	NotReady func() error
}

// DataPath are the data path's counters; nil fields are left out.
type DataPath struct {
	// XDP returns the XDP program's counters (xdp mode).
	XDP func() (any, error)
	// RingMalformed returns how many ring buffer records were refused.
	RingMalformed func() uint64
	// Sockets returns the UDP sockets' counters, summed
	// (udpreceiver.Counters: socket mode, or xdp mode's backstop).
	Sockets func() any
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
		if !m.ready.Load() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		if m.notReady != nil {
			if err := m.notReady(); err != nil {
				http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
				return
			}
		}
		w.Write([]byte("ok\n"))
	})
	return mux
}

// The families a scrape reads, one label "event" a counter field.
var (
	xdpDesc      = prometheus.NewDesc("lastgasp_xdp_events_total", "XDP program counters (bpf/lastgasp.h struct packet_counters), summed over CPUs.", []string{"event"}, nil)
	ringDesc     = prometheus.NewDesc("lastgasp_ringbuf_malformed_records_total", "Ring buffer records that could not be decoded.", nil, nil)
	decoderDesc  = prometheus.NewDesc("lastgasp_decoder_events_total", "netconsole decoder counters.", []string{"event"}, nil)
	detectorDesc = prometheus.NewDesc("lastgasp_detector_events_total", "Incident detector counters.", []string{"event"}, nil)
	journalDesc  = prometheus.NewDesc("lastgasp_journal_events_total", "Journal counters: corrupt records skipped at start-up, incidents resumed, rotations, write errors.", []string{"event"}, nil)
	socketDesc   = prometheus.NewDesc("lastgasp_socket_events_total", "UDP socket data path counters (socket mode, or the backstop socket in xdp mode): datagrams read, matched, context, truncated, drops (lost to a full socket buffer).", []string{"event"}, nil)
	feedDesc     = prometheus.NewDesc("lastgasp_feed_watchers", "lastgasp tail watchers connected to /feed.", nil, nil)
	openDesc     = prometheus.NewDesc("lastgasp_journal_unfinished_incidents", "Incidents taken on and not yet finished with.", nil, nil)
	cleanupDesc  = prometheus.NewDesc("lastgasp_cleanup_events_total", "Cleanup controller counters: refusals (not_allowed, unknown_source, ambiguous, unconfirmed, capped), actions, API errors.", []string{"event"}, nil)
	errorDesc    = prometheus.NewDesc("lastgasp_scrape_errors_total", "Counters that could not be read at this scrape.", []string{"source"}, nil)
)

// scrape is a prometheus.Collector reading the sources' counters.
type scrape struct{ src Sources }

func (s *scrape) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{xdpDesc, ringDesc, decoderDesc, detectorDesc, cleanupDesc, journalDesc, openDesc, feedDesc, socketDesc, errorDesc} {
		ch <- d
	}
}

func (s *scrape) Collect(ch chan<- prometheus.Metric) {
	if s.src.DataPath.XDP != nil {
		c, err := s.src.DataPath.XDP()
		if err != nil {
			ch <- prometheus.MustNewConstMetric(errorDesc, prometheus.GaugeValue, 1, "xdp")
		} else {
			emit(ch, xdpDesc, c)
		}
	}
	if s.src.DataPath.RingMalformed != nil {
		ch <- prometheus.MustNewConstMetric(ringDesc, prometheus.CounterValue, float64(s.src.DataPath.RingMalformed()))
	}
	if s.src.Decoder != nil {
		emit(ch, decoderDesc, s.src.Decoder())
	}
	if s.src.Detector != nil {
		emit(ch, detectorDesc, s.src.Detector())
	}
	if s.src.Cleanup != nil {
		emit(ch, cleanupDesc, s.src.Cleanup())
	}
	if s.src.Journal != nil {
		emit(ch, journalDesc, s.src.Journal())
	}
	if s.src.DataPath.Sockets != nil {
		emit(ch, socketDesc, s.src.DataPath.Sockets())
	}
	if s.src.FeedWatchers != nil {
		ch <- prometheus.MustNewConstMetric(feedDesc, prometheus.GaugeValue, float64(s.src.FeedWatchers()))
	}
	if s.src.JournalUnfinished != nil {
		ch <- prometheus.MustNewConstMetric(openDesc, prometheus.GaugeValue, float64(s.src.JournalUnfinished()))
	}
}

// emit sends one counter per unsigned integer field of a struct (or of
// the struct a pointer points to; atomic.Uint64 fields included), its
// label the field's name in snake case.
func emit(ch chan<- prometheus.Metric, desc *prometheus.Desc, counters any) {
	v := reflect.ValueOf(counters)
	if v.Kind() == reflect.Pointer {
		v = v.Elem()
	}
	if v.Kind() != reflect.Struct {
		return
	}
	for i := range v.NumField() {
		f, name := v.Field(i), v.Type().Field(i).Name
		if !v.Type().Field(i).IsExported() {
			continue
		}
		var n uint64
		switch {
		case f.Kind() == reflect.Uint64:
			n = f.Uint()
		case f.Type() == reflect.TypeFor[atomic.Uint64]():
			n = f.Addr().Interface().(*atomic.Uint64).Load()
		default:
			continue
		}
		ch <- prometheus.MustNewConstMetric(desc, prometheus.CounterValue, float64(n), snake(name))
	}
}

// snake turns a Go field name into a label: RingbufFull -> ringbuf_full.
func snake(name string) string {
	var b strings.Builder
	for i, r := range name {
		if r >= 'A' && r <= 'Z' {
			if i > 0 {
				b.WriteByte('_')
			}
			r += 'a' - 'A'
		}
		b.WriteRune(r)
	}
	return b.String()
}
