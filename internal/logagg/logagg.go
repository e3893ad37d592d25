// Package logagg keeps a flood out of the log: records of one kind are
// written as they come up to a burst a window, and past it counted and
// summed up in one line at the window's end. A forged-trigger flood from
// a hundred thousand addresses then writes a few lines a minute, not
// hundreds of thousands, while the metrics still count each incident.
package logagg

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// Defaults.
const (
	DefaultWindow = time.Minute
	DefaultBurst  = 20
)

// Aggregator writes records through a logger, a burst a key a window.
// Its methods are safe for concurrent use.
type Aggregator struct {
	log    *slog.Logger
	window time.Duration
	burst  int

	mu   sync.Mutex
	keys map[string]*count
}

// count is one key's window.
type count struct {
	start      time.Time
	logged     int
	suppressed int
	msg        string
	level      slog.Level
}

// New returns an Aggregator writing to log; window and burst default to
// DefaultWindow and DefaultBurst when not positive. Start Run to have the
// suppressed records summed up at each window's end.
func New(log *slog.Logger, window time.Duration, burst int) *Aggregator {
	if window <= 0 {
		window = DefaultWindow
	}
	if burst <= 0 {
		burst = DefaultBurst
	}
	return &Aggregator{log: log, window: window, burst: burst, keys: map[string]*count{}}
}

// Log writes the record unless key has had its burst this window; then
// it is counted, for the summary line.
func (a *Aggregator) Log(key string, level slog.Level, msg string, args ...any) {
	now := time.Now()
	a.mu.Lock()
	c := a.keys[key]
	if c == nil || now.Sub(c.start) >= a.window {
		a.summarize(key, c)
		c = &count{start: now, msg: msg, level: level}
		a.keys[key] = c
	}
	if c.logged >= a.burst {
		c.suppressed++
		a.mu.Unlock()
		return
	}
	c.logged++
	a.mu.Unlock()
	a.log.Log(context.Background(), level, msg, args...)
}

// summarize writes how many records of a key's window were not written;
// a.mu is held.
func (a *Aggregator) summarize(key string, c *count) {
	if c == nil || c.suppressed == 0 {
		return
	}
	a.log.Log(context.Background(), c.level, c.msg+" (more, not logged one by one)",
		"key", key, "suppressed", c.suppressed, "window", a.window.String(), "since", c.start)
	c.suppressed = 0
}

// Run sums up the windows that ended, every window, until ctx is done;
// then it sums up what is left.
func (a *Aggregator) Run(ctx context.Context) {
	tick := time.NewTicker(a.window)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			a.flush(time.Time{})
			return
		case now := <-tick.C:
			a.flush(now)
		}
	}
}

// flush sums up and forgets the windows that ended before now (all of
// them when now is zero).
func (a *Aggregator) flush(now time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for key, c := range a.keys {
		if now.IsZero() || now.Sub(c.start) >= a.window {
			a.summarize(key, c)
			delete(a.keys, key)
		}
	}
}
