package main

import (
	"context"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"github.com/lastgasp/lastgasp/internal/collector"
	"github.com/lastgasp/lastgasp/internal/filter"
	"github.com/lastgasp/lastgasp/internal/pattern"
	"github.com/lastgasp/lastgasp/internal/spool"
)

// TestSpoolCountsLinesNotAllowed: with --allow, a line from an address
// not allowed (anyone can send one) is spooled and dropped by the
// collector; the count of assembled lines that trimSpool compares with
// the spool's sequence numbers must still pass it, or one forged packet
// stops the spool from ever being trimmed: it fills to its bound and
// evicts, counted as lost, the lines of real panics.
func TestSpoolCountsLinesNotAllowed(t *testing.T) {
	sp, replay, err := spool.Open(spool.Config{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	d := &daemon{log: slog.New(slog.DiscardHandler), spool: sp}
	d.patterns.Store(pattern.Default())
	line := func(src string) filter.Line {
		return filter.Line{Time: time.Now(), Flag: filter.Context, Source: netip.MustParseAddrPort(src),
			Payload: []byte("6,1,12000000,-;some context\n")}
	}
	lines := []filter.Line{line("10.0.0.7:6665"), line("192.0.2.66:6665"), line("10.0.0.7:6665")}
	src := sourceFunc(func(_ context.Context, emit func(filter.Line)) error {
		for _, l := range lines {
			emit(l)
		}
		return nil
	})
	if err := collector.Run(context.Background(), collector.Config{
		Source: d.spooled(src, replay), Patterns: pattern.Default(), Logger: slog.New(slog.DiscardHandler),
		Allowed: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}, OnLine: d.line,
	}); err != nil {
		t.Fatal(err)
	}
	if written, assembled := sp.Stats().Written, d.assembledLines.Load(); assembled != written {
		t.Errorf("%d lines spooled, %d counted as assembled: the spool's last segment is never trimmed", written, assembled)
	}
}
