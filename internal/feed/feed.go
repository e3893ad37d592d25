// Package feed streams what a running collector sees to whoever watches
// (lastgasp tail): its incidents, how each was finished with, and, to a
// watcher that asks, every forwarded line. It is served over HTTP as one
// JSON object a line, each with one field set:
//
//	{"incident": {...detect.Incident...}}
//	{"finished": {"id": "...", "source": "...", "outcome": "cleaned up"}}
//	{"line": {"source": "...", "port": 6665, "time": "...", "flag": "match", ...}}
//	{"dropped": 12}   records this watcher was too slow for
//
// Publishing never blocks the collector: each watcher has a bounded
// queue, and what does not fit is dropped and counted, for it to see.
package feed

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lastgasp/lastgasp/internal/detect"
	"github.com/lastgasp/lastgasp/internal/filter"
	"github.com/lastgasp/lastgasp/internal/pattern"
)

// Line is how a forwarded line is shown.
type Line struct {
	Source    string    `json:"source"`
	Port      uint16    `json:"port"`
	Time      time.Time `json:"time"`
	Flag      string    `json:"flag"`
	Pattern   string    `json:"pattern,omitempty"`
	Kind      string    `json:"kind,omitempty"`
	Text      string    `json:"text"`
	Truncated bool      `json:"truncated,omitempty"`
}

// NewLine renders l; the text is the payload less its trailing newlines
// and NULs (invalid UTF-8 becomes U+FFFD in JSON), the pattern and kind
// looked up in table.
func NewLine(l filter.Line, table *pattern.Table) Line {
	j := Line{
		Source:    l.Source.Addr().String(),
		Port:      l.Source.Port(),
		Time:      l.Time.UTC(),
		Flag:      l.Flag.String(),
		Text:      string(bytes.TrimRight(l.Payload, "\n\x00")),
		Truncated: l.Truncated,
	}
	if p, ok := table.ByID(l.PatternID); ok {
		j.Pattern, j.Kind = p.Prefix, string(p.Kind)
	}
	return j
}

// Finished says how an incident was finished with.
type Finished struct {
	ID      string `json:"id"`
	Source  string `json:"source"`
	Outcome string `json:"outcome"`
}

// Record is one object of the stream.
type Record struct {
	Incident *detect.Incident `json:"incident,omitempty"`
	Finished *Finished        `json:"finished,omitempty"`
	Line     *Line            `json:"line,omitempty"`
	Dropped  uint64           `json:"dropped,omitempty"`
}

// queueLen is how many records a watcher may be behind.
const queueLen = 1024

// MaxWatchers bounds the watchers at once: each costs the collector a
// copy of every record it publishes.
const MaxWatchers = 16

// watcher is one connected client.
type watcher struct {
	records chan []byte
	lines   bool
	dropped atomic.Uint64
}

// DefaultWriteTimeout bounds one write to a watcher: one that stops
// reading is disconnected then, and its slot freed.
const DefaultWriteTimeout = 5 * time.Second

// Feed fans records out to its watchers. The zero value is ready.
type Feed struct {
	// WriteTimeout bounds each write to a watcher; past it the watcher is
	// disconnected, so stalled clients cannot hold every slot. Default
	// DefaultWriteTimeout.
	WriteTimeout time.Duration

	mu       sync.Mutex
	watchers map[*watcher]struct{}
	// lineWatchers counts watchers of lines: with none, Line costs one
	// atomic load.
	lineWatchers atomic.Int32
}

// Watchers returns how many watchers are connected.
func (f *Feed) Watchers() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.watchers)
}

// Incident publishes an incident.
func (f *Feed) Incident(inc detect.Incident) { f.publish(Record{Incident: &inc}, false) }

// Finish publishes how an incident was finished with.
func (f *Feed) Finish(inc detect.Incident, outcome string) {
	f.publish(Record{Finished: &Finished{ID: inc.ID, Source: inc.Source.String(), Outcome: outcome}}, false)
}

// Line publishes a forwarded line to the watchers of lines.
func (f *Feed) Line(l filter.Line, table *pattern.Table) {
	if f.lineWatchers.Load() == 0 {
		return
	}
	line := NewLine(l, table)
	f.publish(Record{Line: &line}, true)
}

func (f *Feed) publish(r Record, isLine bool) {
	b, err := json.Marshal(r)
	if err != nil {
		return // cannot happen: every field marshals
	}
	b = append(b, '\n')
	f.mu.Lock()
	defer f.mu.Unlock()
	for w := range f.watchers {
		if isLine && !w.lines {
			continue
		}
		select {
		case w.records <- b:
		default:
			w.dropped.Add(1)
		}
	}
}

// ServeHTTP streams records to one watcher until it goes away; the query
// parameter lines=1 asks for the forwarded lines too.
func (f *Feed) ServeHTTP(rw http.ResponseWriter, r *http.Request) {
	flusher, ok := rw.(http.Flusher)
	if !ok {
		http.Error(rw, "streaming unsupported", http.StatusInternalServerError)
		return
	}
	w := &watcher{records: make(chan []byte, queueLen), lines: r.URL.Query().Get("lines") == "1"}
	f.mu.Lock()
	if len(f.watchers) >= MaxWatchers {
		f.mu.Unlock()
		http.Error(rw, fmt.Sprintf("%d watchers already: no more", MaxWatchers), http.StatusServiceUnavailable)
		return
	}
	if f.watchers == nil {
		f.watchers = map[*watcher]struct{}{}
	}
	f.watchers[w] = struct{}{}
	f.mu.Unlock()
	if w.lines {
		f.lineWatchers.Add(1)
	}
	defer func() {
		f.mu.Lock()
		delete(f.watchers, w)
		f.mu.Unlock()
		if w.lines {
			f.lineWatchers.Add(-1)
		}
	}()

	timeout := f.WriteTimeout
	if timeout <= 0 {
		timeout = DefaultWriteTimeout
	}
	rc := http.NewResponseController(rw)
	rw.Header().Set("Content-Type", "application/x-ndjson")
	rw.WriteHeader(http.StatusOK)
	flusher.Flush()
	for {
		select {
		case <-r.Context().Done():
			return
		case b := <-w.records:
			if err := rc.SetWriteDeadline(time.Now().Add(timeout)); err != nil {
				return
			}
			if n := w.dropped.Swap(0); n > 0 {
				fmt.Fprintf(rw, "{\"dropped\":%d}\n", n)
			}
			if _, err := rw.Write(b); err != nil {
				return
			}
			if err := rc.Flush(); err != nil {
				return
			}
		}
	}
}
