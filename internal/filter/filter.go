// Package filter is the Go twin of the XDP program's decision: which
// netconsole lines to forward (a pattern match, or context after one from
// the same source) and which to throw away. It also defines Line, what
// either data path hands on: the XDP program through the ring buffer
// (package ringbuf), or a plain UDP socket through this Filter (package
// udpreceiver).
//
// Filter follows bpf/lastgasp.c rule for rule; a differential test runs
// both on the same packets.
package filter

import (
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"

	"github.com/lastgasp/lastgasp/bpf"
	"github.com/lastgasp/lastgasp/internal/pattern"
)

// Flag says why a line was forwarded.
type Flag uint8

// The reasons a line is forwarded.
const (
	// Match: the line's text starts with a pattern.
	Match Flag = Flag(bpf.LastgaspRecordFlagsRECORD_MATCH)
	// Context: the line came from a source within a burst after a match.
	Context Flag = Flag(bpf.LastgaspRecordFlagsRECORD_CONTEXT)
)

// String returns "match" or "context".
func (f Flag) String() string {
	switch f {
	case Match:
		return "match"
	case Context:
		return "context"
	}
	return "unknown"
}

// MaxPayload is the most payload bytes a forwarded line carries; longer
// datagrams are cut and flagged Truncated.
const MaxPayload = int(bpf.LastgaspLimitsRECORD_PAYLOAD_LEN)

// Line is one forwarded netconsole datagram.
type Line struct {
	// Source is the sender's address and UDP port; IPv4 addresses are
	// plain (not IPv4-mapped IPv6).
	Source netip.AddrPort
	// Time is when the collector received the datagram.
	Time time.Time
	// Flag says why it was forwarded.
	Flag Flag
	// PatternID is the matching pattern's id with Match, else 0.
	PatternID uint32
	// Truncated is set when the datagram was longer than MaxPayload.
	Truncated bool
	// Payload is the datagram's payload as sent (at most MaxPayload
	// bytes): one console line, with the netconsole header if extended.
	Payload []byte
}

// Config configures a Filter; zero fields take the defaults of
// package loader's Config, which configures the kernel program.
type Config struct {
	// Patterns is the pattern table. Default pattern.Default().
	Patterns *pattern.Table
	// BurstLines is the most lines that follow a match as context: a
	// burst stays open until the report's end marker, this many lines, or
	// BurstTimeout. Default 256, never less than ContextLines.
	BurstLines int
	// ContextLines is how many lines still follow the end marker.
	// Default 20.
	ContextLines int
	// NoContext turns bursts off.
	NoContext bool
	// ForwardAll forwards every line (flagged Context unless it
	// matches): for a socket behind the XDP program, which passes up
	// only lines it chose to forward and found no room for, and IP
	// fragments it could not judge.
	ForwardAll bool
	// BurstTimeout closes a burst this long after its last match.
	// Default 10s.
	BurstTimeout time.Duration
	// MaxSources is how many sources' bursts are remembered (least
	// recently used forgotten first). Default 100,000.
	MaxSources int
}

// burst is one source's open burst, as struct burst in bpf/lastgasp.h.
type burst struct {
	remaining int
	expires   time.Time
}

// Filter decides which lines to forward. It is not safe for concurrent
// use (the socket receiver runs one per reading goroutine), except for
// SetPatterns.
type Filter struct {
	cfg Config
	// patterns is the table in use: SetPatterns may swap it from another
	// goroutine (a reload).
	patterns atomic.Pointer[pattern.Table]
	// bursts holds each source's open burst.
	bursts *simplelru.LRU[netip.Addr, *burst]
	// lastMatch is the time of the latest match from any source: no
	// burst can be open BurstTimeout after it.
	lastMatch time.Time
}

// New returns a Filter with cfg, defaults applied.
func New(cfg Config) *Filter {
	if cfg.Patterns == nil {
		cfg.Patterns = pattern.Default()
	}
	if cfg.NoContext {
		cfg.ContextLines, cfg.BurstLines = 0, 0
	} else {
		if cfg.ContextLines <= 0 {
			cfg.ContextLines = 20
		}
		if cfg.BurstLines <= 0 {
			cfg.BurstLines = 256
		}
		cfg.BurstLines = max(cfg.BurstLines, cfg.ContextLines)
	}
	if cfg.BurstTimeout <= 0 {
		cfg.BurstTimeout = 10 * time.Second
	}
	if cfg.MaxSources <= 0 {
		cfg.MaxSources = int(bpf.LastgaspLimitsBURSTS_MAX)
	}
	// NewLRU fails only for a size below 1, which the defaults rule out.
	bursts, _ := simplelru.NewLRU[netip.Addr, *burst](cfg.MaxSources, nil)
	f := &Filter{cfg: cfg, bursts: bursts}
	f.patterns.Store(cfg.Patterns)
	return f
}

// Patterns returns the filter's pattern table.
func (f *Filter) Patterns() *pattern.Table { return f.patterns.Load() }

// SetPatterns replaces the pattern table, safely while Judge runs in
// another goroutine; open bursts stay open.
func (f *Filter) SetPatterns(t *pattern.Table) { f.patterns.Store(t) }

// Judge decides about one datagram from src received at now. It returns
// the line to forward and true, or false for a line to throw away. The
// returned Line's Payload aliases payload (cut to MaxPayload).
func (f *Filter) Judge(src netip.AddrPort, payload []byte, now time.Time) (Line, bool) {
	src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
	line := Line{Source: src, Time: now, Payload: payload}
	if len(line.Payload) > MaxPayload {
		line.Payload = line.Payload[:MaxPayload]
		line.Truncated = true
	}
	end := pattern.ReportEnd(payload)
	if p, ok := f.patterns.Load().Match(payload); ok {
		line.Flag, line.PatternID = Match, p.ID
		f.openBurst(src.Addr(), now, end)
		return line, true
	}
	if f.cfg.ForwardAll || f.takeContext(src.Addr(), now, end) {
		line.Flag = Context
		return line, true
	}
	return Line{}, false
}

// openBurst starts or restarts addr's burst (open_burst in the C): for
// BurstLines lines, or ContextLines if the match is an end marker.
func (f *Filter) openBurst(addr netip.Addr, now time.Time, end bool) {
	if f.cfg.BurstLines == 0 {
		return
	}
	n := f.cfg.BurstLines
	if end {
		n = f.cfg.ContextLines
	}
	f.bursts.Add(addr, &burst{remaining: n, expires: now.Add(f.cfg.BurstTimeout)})
	f.lastMatch = now
}

// takeContext reports whether a line from addr is context, and takes it
// off the burst (take_context in the C); an end marker leaves the burst
// at most ContextLines more.
func (f *Filter) takeContext(addr netip.Addr, now time.Time, end bool) bool {
	if f.cfg.BurstLines == 0 || !now.Before(f.lastMatch.Add(f.cfg.BurstTimeout)) {
		return false
	}
	b, ok := f.bursts.Get(addr)
	if !ok {
		return false
	}
	if !now.Before(b.expires) || b.remaining <= 0 {
		return false
	}
	b.remaining--
	if end {
		b.remaining = min(b.remaining, f.cfg.ContextLines)
	}
	return true
}
