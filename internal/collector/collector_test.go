package collector_test

import (
	"context"
	"fmt"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lastgasp/lastgasp/internal/collector"
	"github.com/lastgasp/lastgasp/internal/filter"
)

// stopping is a data path that, once its context is done, hands on the
// lines it had already read (as the ring buffer reader and the batched
// socket reads do), then returns.
type stopping struct{ lines int }

func (s stopping) Run(ctx context.Context, emit func(filter.Line)) error {
	<-ctx.Done()
	src := netip.MustParseAddrPort("10.0.0.1:6665")
	for i := range s.lines {
		emit(filter.Line{Source: src, Time: time.Now(), Flag: filter.Context, Payload: fmt.Appendf(nil, "[ 1.%06d] line %d", i, i)})
	}
	return nil
}

// TestLinesReadAsItStops: every line a data path emits after the
// collector's context is done, but before the data path returns, is
// assembled (OnLine sees it): none is dropped between the data path and
// the assembler (a line read as the collector stops may be a panic's).
func TestLinesReadAsItStops(t *testing.T) {
	const n = 10_000
	ctx, cancel := context.WithCancel(context.Background())
	var seen atomic.Int64
	done := make(chan error, 1)
	go func() {
		done <- collector.Run(ctx, collector.Config{
			Source: stopping{lines: n},
			OnLine: func(filter.Line, bool) { seen.Add(1) },
		})
	}()
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got := seen.Load(); got != n {
		t.Errorf("%d of the %d lines emitted as the collector stopped were assembled", got, n)
	}
}
