package metrics

import (
	"regexp"
	"slices"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/lastgasp/lastgasp/internal/agent"
)

// The agent's families.
var (
	agentCounters = counters(
		def[agent.Stats]{"lastgasp_agent_netconsole_setups_total", "netconsole setups the agent ran (at each change of the collectors, and every resync).", func(s *agent.Stats) uint64 { return s.Setups.Load() }},
		def[agent.Stats]{"lastgasp_agent_netconsole_setup_failures_total", "netconsole setups that failed (no netconsole, no route or no MAC for a collector, no collector ready).", func(s *agent.Stats) uint64 { return s.Failures.Load() }},
		def[agent.Stats]{"lastgasp_agent_netconsole_target_changes_total", "netconsole targets created, rewritten or removed.", func(s *agent.Stats) uint64 { return s.Changes.Load() }},
	)
	agentOK      = prometheus.NewDesc("lastgasp_agent_netconsole_setup_ok", "1 when the node's last netconsole setup succeeded, 0 when it failed (its panics may reach no collector), -1 before the first.", nil, nil)
	agentTargets = prometheus.NewDesc("lastgasp_agent_netconsole_targets", "netconsole targets the last setup left configured.", nil, nil)
)

// NewAgent registers the agent's metrics, read from stats at each scrape.
// Handler's /readyz says ready once the agent's cache has synced.
func NewAgent(stats *agent.Stats) *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry()}
	m.reg.MustRegister(buildInfo())
	m.reg.MustRegister(clientGo.collectors...)
	m.reg.MustRegister(&agentScrape{stats: stats},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m.notReady = func() error {
		if !stats.Synced.Load() {
			return errNotSynced
		}
		return nil
	}
	m.ready.Store(true)
	return m
}

// agentScrape is a prometheus.Collector reading the agent's stats.
type agentScrape struct{ stats *agent.Stats }

func (s *agentScrape) Describe(ch chan<- *prometheus.Desc) {
	describe(ch, agentCounters)
	ch <- agentOK
	ch <- agentTargets
}

func (s *agentScrape) Collect(ch chan<- prometheus.Metric) {
	collect(ch, agentCounters, s.stats)
	ch <- prometheus.MustNewConstMetric(agentOK, prometheus.GaugeValue, float64(s.stats.OK.Load()))
	ch <- prometheus.MustNewConstMetric(agentTargets, prometheus.GaugeValue, float64(s.stats.Targets.Load()))
}

type notSynced struct{}

func (notSynced) Error() string { return "EndpointSlice cache not synced" }

var errNotSynced error = notSynced{}

// fqName finds a Desc's name in its String form (Desc has no accessor).
var fqName = regexp.MustCompile(`fqName: "([^"]+)"`)

// Families returns the name of every family of the collector's and the
// agent's own (lastgasp_) metrics: what alert rules may use.
func Families() []string {
	m := New(Sources{})
	ch := make(chan *prometheus.Desc, 512)
	go func() {
		for _, c := range []prometheus.Collector{m.incidents, m.finished, m.nodeDeleted, m.reloads, m.readyGauge, buildInfo(), &scrape{}, &agentScrape{}} {
			c.Describe(ch)
		}
		close(ch)
	}()
	var out []string
	for d := range ch {
		if n := fqName.FindStringSubmatch(d.String()); n != nil {
			out = append(out, n[1])
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}
