package metrics

import (
	"context"
	"net/url"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientmetrics "k8s.io/client-go/tools/metrics"
	"k8s.io/client-go/util/workqueue"
)

// clientGo are client-go's own metrics: its work queues' (the cleanup
// controller's) and its REST client's (every call to the API server).
// client-go takes their providers once per process, before the first
// queue or client is made: this package's init gives them, and every
// Metrics serves them.
var clientGo = newClientGoMetrics()

func init() {
	workqueue.SetProvider(clientGo)
	clientmetrics.Register(clientmetrics.RegisterOpts{
		RequestLatency:     requestLatency{clientGo.requestLatency},
		RateLimiterLatency: requestLatency{clientGo.rateLimiterLatency},
		RequestResult:      requestResult{clientGo.requestResults},
	})
}

type clientGoMetrics struct {
	depth, unfinished, longest *prometheus.GaugeVec
	adds, retries              *prometheus.CounterVec
	queueLatency, workDuration *prometheus.HistogramVec
	requestLatency             *prometheus.HistogramVec
	rateLimiterLatency         *prometheus.HistogramVec
	requestResults             *prometheus.CounterVec
	collectors                 []prometheus.Collector
}

func newClientGoMetrics() *clientGoMetrics {
	q := []string{"name"}
	buckets := prometheus.ExponentialBuckets(0.001, 4, 9) // 1 ms to 65 s
	m := &clientGoMetrics{
		depth:        prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "lastgasp_workqueue_depth", Help: "Items waiting in a client-go work queue (the cleanup controller's incidents)."}, q),
		adds:         prometheus.NewCounterVec(prometheus.CounterOpts{Name: "lastgasp_workqueue_adds_total", Help: "Items added to a work queue."}, q),
		queueLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "lastgasp_workqueue_queue_duration_seconds", Help: "How long an item waited in a work queue before a worker took it.", Buckets: buckets}, q),
		workDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "lastgasp_workqueue_work_duration_seconds", Help: "How long a worker took over an item.", Buckets: buckets}, q),
		unfinished:   prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "lastgasp_workqueue_unfinished_work_seconds", Help: "Seconds of work in progress not yet finished (a stuck worker makes it grow)."}, q),
		longest:      prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "lastgasp_workqueue_longest_running_processor_seconds", Help: "How long the longest-running worker has been at its item."}, q),
		retries:      prometheus.NewCounterVec(prometheus.CounterOpts{Name: "lastgasp_workqueue_retries_total", Help: "Items a work queue was given back to retry."}, q),
		requestLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "lastgasp_rest_client_request_duration_seconds",
			Help: "Latency of the collector's requests to the API server, by verb.", Buckets: buckets}, []string{"verb"}),
		rateLimiterLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "lastgasp_rest_client_rate_limiter_duration_seconds",
			Help: "How long requests waited for the client's own rate limit (--kube-api-qps, --kube-api-burst), by verb.", Buckets: buckets}, []string{"verb"}),
		requestResults: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "lastgasp_rest_client_requests_total",
			Help: "The collector's requests to the API server, by HTTP status code and method."}, []string{"code", "method"}),
	}
	m.collectors = []prometheus.Collector{m.depth, m.adds, m.queueLatency, m.workDuration, m.unfinished, m.longest, m.retries,
		m.requestLatency, m.rateLimiterLatency, m.requestResults}
	return m
}

// The workqueue.MetricsProvider methods.

func (m *clientGoMetrics) NewDepthMetric(name string) workqueue.GaugeMetric {
	return m.depth.WithLabelValues(name)
}
func (m *clientGoMetrics) NewAddsMetric(name string) workqueue.CounterMetric {
	return m.adds.WithLabelValues(name)
}
func (m *clientGoMetrics) NewLatencyMetric(name string) workqueue.HistogramMetric {
	return m.queueLatency.WithLabelValues(name)
}
func (m *clientGoMetrics) NewWorkDurationMetric(name string) workqueue.HistogramMetric {
	return m.workDuration.WithLabelValues(name)
}
func (m *clientGoMetrics) NewUnfinishedWorkSecondsMetric(name string) workqueue.SettableGaugeMetric {
	return m.unfinished.WithLabelValues(name)
}
func (m *clientGoMetrics) NewLongestRunningProcessorSecondsMetric(name string) workqueue.SettableGaugeMetric {
	return m.longest.WithLabelValues(name)
}
func (m *clientGoMetrics) NewRetriesMetric(name string) workqueue.CounterMetric {
	return m.retries.WithLabelValues(name)
}

// requestLatency is client-go's LatencyMetric: by verb only (a URL would
// be a label of unbounded values).
type requestLatency struct{ h *prometheus.HistogramVec }

func (r requestLatency) Observe(_ context.Context, verb string, _ url.URL, latency time.Duration) {
	r.h.WithLabelValues(verb).Observe(latency.Seconds())
}

// requestResult is client-go's ResultMetric.
type requestResult struct{ c *prometheus.CounterVec }

func (r requestResult) Increment(_ context.Context, code, method, _ string) {
	r.c.WithLabelValues(code, method).Inc()
}
