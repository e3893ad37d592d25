package feed_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
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

// Watchers that connect and never read are disconnected once a write to
// them has waited WriteTimeout, so they cannot hold every slot: a new
// watcher gets in.
func TestStalledWatchersFreeTheirSlots(t *testing.T) {
	f := &feed.Feed{WriteTimeout: 200 * time.Millisecond}
	srv := httptest.NewServer(f)
	defer srv.Close()
	for range feed.MaxWatchers {
		conn, err := net.Dial("tcp", srv.Listener.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.(*net.TCPConn).SetReadBuffer(4096)
		fmt.Fprintf(conn, "GET / HTTP/1.1\r\nHost: feed\r\n\r\n") // and never read
	}
	for f.Watchers() < feed.MaxWatchers {
		time.Sleep(10 * time.Millisecond) // the server's accept is the only signal
	}
	big := detect.Incident{ID: "big", Lines: []string{strings.Repeat("x", 64<<10)}}
	deadline := time.Now().Add(20 * time.Second)
	for f.Watchers() == feed.MaxWatchers {
		if time.Now().After(deadline) {
			t.Fatalf("%d stalled watchers still connected", f.Watchers())
		}
		f.Incident(big) // fills their socket buffers, then their queues
		time.Sleep(time.Millisecond)
	}
	records, stop := watch(t, srv.URL)
	defer stop()
	f.Incident(detect.Incident{ID: "after"})
	for r := next(t, records); r.Incident == nil || r.Incident.ID != "after"; r = next(t, records) {
	}
}
