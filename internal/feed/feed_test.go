package feed_test

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/lastgasp/lastgasp/internal/detect"
	"github.com/lastgasp/lastgasp/internal/feed"
	"github.com/lastgasp/lastgasp/internal/filter"
	"github.com/lastgasp/lastgasp/internal/pattern"
)

// watch connects to the feed and returns its records as they come.
func watch(t *testing.T, url string) (<-chan feed.Record, context.CancelFunc) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	out := make(chan feed.Record)
	go func() {
		defer resp.Body.Close()
		defer close(out)
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			var r feed.Record
			if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
				t.Errorf("record %q: %v", sc.Text(), err)
				return
			}
			select {
			case out <- r:
			case <-ctx.Done():
				return
			}
		}
	}()
	return out, cancel
}

func next(t *testing.T, records <-chan feed.Record) feed.Record {
	t.Helper()
	select {
	case r := <-records:
		return r
	case <-time.After(5 * time.Second):
		t.Fatal("no record")
		return feed.Record{}
	}
}

func TestFeed(t *testing.T) {
	var f feed.Feed
	srv := httptest.NewServer(&f)
	defer srv.Close()
	incidents, stopIncidents := watch(t, srv.URL)
	defer stopIncidents()
	lines, stopLines := watch(t, srv.URL+"?lines=1")
	defer stopLines()
	// Both are connected once a record reaches both.
	inc := detect.Incident{ID: "abc", Source: netip.MustParseAddr("10.0.0.2"), Kind: pattern.KindSysrq, Fatal: true, Reason: "Kernel panic - not syncing: x"}
	f.Incident(inc)
	for _, ch := range []<-chan feed.Record{incidents, lines} {
		if r := next(t, ch); r.Incident == nil || r.Incident.ID != "abc" || !r.Incident.Fatal {
			t.Errorf("record %+v", r)
		}
	}

	table := pattern.Default()
	f.Line(filter.Line{Source: netip.MustParseAddrPort("10.0.0.2:6665"), Flag: filter.Match, PatternID: 1, Payload: []byte("Kernel panic - not syncing: x\n")}, table)
	f.Finish(inc, "cleaned up")
	if r := next(t, lines); r.Line == nil || r.Line.Text != "Kernel panic - not syncing: x" || r.Line.Kind != "panic" || r.Line.Flag != "match" {
		t.Errorf("line record %+v", r)
	}
	if r := next(t, lines); r.Finished == nil || r.Finished.Outcome != "cleaned up" {
		t.Errorf("finished record %+v", r)
	}
	if r := next(t, incidents); r.Finished == nil || r.Finished.ID != "abc" { // no line for it
		t.Errorf("a watcher of incidents got %+v", r)
	}
}

// A watcher that does not read never holds the publisher up: what does
// not fit its queue is dropped, and it is told how much.
func TestSlowWatcher(t *testing.T) {
	var f feed.Feed
	srv := httptest.NewServer(&f)
	defer srv.Close()
	records, stop := watch(t, srv.URL)
	defer stop()
	f.Incident(detect.Incident{ID: "first"})
	next(t, records)

	big := detect.Incident{ID: "big", Lines: []string{strings.Repeat("x", 4096)}}
	start := time.Now()
	for range 20000 { // 80 MB: more than the queue and every socket buffer
		f.Incident(big)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("publishing took %v: it waited for the watcher", d)
	}
	var got, dropped uint64
	for dropped == 0 { // the notice comes with the next record after the drops
		if r := next(t, records); r.Dropped > 0 {
			dropped = r.Dropped
		} else {
			got++
		}
	}
	t.Logf("%d records read, then told %d were dropped", got, dropped)
}
