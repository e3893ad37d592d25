package metrics

import (
	"context"
	"errors"
	"net/http/httptest"
	"reflect"
	"regexp"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"

	clientmetrics "k8s.io/client-go/tools/metrics"
	"k8s.io/client-go/util/workqueue"

	"github.com/lastgasp/lastgasp/internal/netconsole"
)

// covers checks that every counter field of T is read by exactly one
// family: a counter added to a package and forgotten here fails, as does
// a family that reads the wrong field. (Reflection is the test's only:
// the families' names are written out, never derived from fields.)
func covers[T any](t *testing.T, cs []counter[T]) {
	t.Helper()
	typ := reflect.TypeFor[T]()
	for i := range typ.NumField() {
		f := typ.Field(i)
		var v T
		field := reflect.ValueOf(&v).Elem().Field(i)
		const mark = 0x5eed
		switch {
		case f.Type.Kind() == reflect.Uint64:
			field.SetUint(mark)
		case f.Type == reflect.TypeFor[atomic.Uint64]():
			field.Addr().Interface().(*atomic.Uint64).Store(mark)
		default:
			continue
		}
		var readers []string
		for _, c := range cs {
			if c.value(&v) == mark {
				readers = append(readers, c.desc.String())
			}
		}
		if len(readers) != 1 {
			t.Errorf("%s.%s is read by %d families, want 1: %v", typ, f.Name, len(readers), readers)
		}
	}
}

func TestEveryCounterHasOneFamily(t *testing.T) {
	covers(t, xdpCounters)
	covers(t, socketCounters)
	covers(t, decoderCounters)
	covers(t, detectorCounters)
	covers(t, journalCounters)
	covers(t, spoolCounters)
	covers(t, cleanupCounters)
}

// Names follow Prometheus's conventions: lastgasp_, snake case, counters
// end in _total; each family is one meaning, named once.
func TestNames(t *testing.T) {
	var descs []string
	for _, d := range [][]string{
		names(xdpCounters), names(socketCounters), names(decoderCounters), names(detectorCounters),
		names(journalCounters), names(spoolCounters), names(cleanupCounters),
	} {
		descs = append(descs, d...)
	}
	valid := regexp.MustCompile(`^lastgasp_[a-z0-9]+(_[a-z0-9]+)*_total$`)
	seen := map[string]bool{}
	for _, n := range descs {
		if !valid.MatchString(n) {
			t.Errorf("%q is not a counter's name by the conventions", n)
		}
		if seen[n] {
			t.Errorf("%q is named twice", n)
		}
		seen[n] = true
	}
}

func names[T any](cs []counter[T]) []string {
	var out []string
	for _, c := range cs {
		// Desc{fqName: "lastgasp_...", help: ...}
		s := c.desc.String()
		s = s[strings.Index(s, `fqName: "`)+len(`fqName: "`):]
		out = append(out, s[:strings.Index(s, `"`)])
	}
	return out
}

// A scrape serves build_info and the gauges of the sources given, and
// leaves out those not given.
func TestScrape(t *testing.T) {
	m := New(Sources{
		OpenIncidents: func() int { return 7 },
		JournalQueue:  func() int { return 3 },
		Decoder:       func() netconsole.Counters { return netconsole.Counters{Duplicates: 5} },
	})
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body := rec.Body.String()
	for _, want := range []string{
		"lastgasp_open_incidents 7\n",
		"lastgasp_journal_queue_depth 3\n",
		"lastgasp_decoder_duplicate_messages_total 5\n",
		`lastgasp_build_info{goversion="` + runtime.Version() + `"`,
		"# HELP lastgasp_decoder_duplicate_messages_total Messages dropped as already seen.\n",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("scrape lacks %q:\n%s", want, body)
		}
	}
	for _, absent := range []string{"lastgasp_cleanup_pending_incidents", "lastgasp_xdp_packets_total", "lastgasp_feed_watchers"} {
		if strings.Contains(body, absent+" ") {
			t.Errorf("scrape has %s, whose source was not given", absent)
		}
	}
}

// TestClientGoMetrics: client-go's work queues and REST client report
// through this package's providers, and a scrape serves them.
func TestClientGoMetrics(t *testing.T) {
	q := workqueue.NewTypedRateLimitingQueueWithConfig(workqueue.DefaultTypedControllerRateLimiter[string](),
		workqueue.TypedRateLimitingQueueConfig[string]{Name: "metrics-test"})
	defer q.ShutDown()
	q.Add("a")
	q.Add("b")
	clientmetrics.RequestResult.Increment(context.Background(), "403", "PATCH", "api")
	rec := httptest.NewRecorder()
	New(Sources{}).Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	for _, want := range []string{
		`lastgasp_workqueue_adds_total{name="metrics-test"} 2`,
		`lastgasp_workqueue_depth{name="metrics-test"} 2`,
		`lastgasp_rest_client_requests_total{code="403",method="PATCH"} 1`,
	} {
		if !strings.Contains(rec.Body.String(), want+"\n") {
			t.Errorf("scrape lacks %q", want)
		}
	}
}

// TestReady: lastgasp_ready says what /readyz says (the
// LastgaspCollectorNotReady alert reads it).
func TestReady(t *testing.T) {
	var broken error
	m := New(Sources{NotReady: func() error { return broken }})
	get := func(path string) (int, string) {
		rec := httptest.NewRecorder()
		m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
		return rec.Code, rec.Body.String()
	}
	for _, step := range []struct {
		ready  bool
		broken error
		code   int
		gauge  string
	}{
		{false, nil, 503, "lastgasp_ready 0\n"},
		{true, nil, 200, "lastgasp_ready 1\n"},
		{true, errors.New("journal full"), 503, "lastgasp_ready 0\n"},
	} {
		m.SetReady(step.ready)
		broken = step.broken
		code, _ := get("/readyz")
		_, body := get("/metrics")
		if code != step.code || !strings.Contains(body, step.gauge) {
			t.Errorf("ready %v, broken %v: /readyz %d, want %d; metrics lack %q", step.ready, step.broken, code, step.code, step.gauge)
		}
	}
}
