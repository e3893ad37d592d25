package collector

import (
	"context"
	"errors"
	"sync"

	"github.com/lastgasp/lastgasp/internal/filter"
)

// Sources runs several sources at once as one (a socket receiver a
// port); emit may be called from several goroutines.
type Sources []Source

// Run runs every source until ctx is done or one fails (which stops the
// others).
func (s Sources) Run(ctx context.Context, emit func(filter.Line)) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var mu sync.Mutex
	safe := func(l filter.Line) { mu.Lock(); emit(l); mu.Unlock() }
	errs := make([]error, len(s))
	var wg sync.WaitGroup
	for i, src := range s {
		wg.Go(func() {
			if errs[i] = src.Run(ctx, safe); errs[i] != nil {
				cancel()
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}
