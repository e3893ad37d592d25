package main

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"time"

	"github.com/lastgasp/lastgasp/internal/pattern"
)

// patternsPollEvery is how often the patterns file is checked for a
// change (a ConfigMap update swaps a symlink: polling the content sees
// it, where a watch on the file would not).
const patternsPollEvery = 2 * time.Second

// watchPatterns reloads the patterns file on SIGHUP (from hup) and when
// its content changes from last, and hands each valid new table to apply;
// a file that does not parse is logged, and the table in use kept.
// Without a file, a SIGHUP is logged and does nothing.
func watchPatterns(ctx context.Context, path string, last []byte, hup <-chan os.Signal, log *slog.Logger, apply func(*pattern.Table) bool, rejected func()) {
	tick := time.NewTicker(patternsPollEvery)
	defer tick.Stop()
	for {
		why := "the file changed"
		select {
		case <-ctx.Done():
			return
		case <-hup:
			if path == "" {
				log.Info("SIGHUP: there is no --patterns file to reload")
				continue
			}
			why = "SIGHUP"
		case <-tick.C:
			if path == "" {
				continue
			}
			if now, err := os.ReadFile(path); err != nil || bytes.Equal(now, last) {
				continue
			}
		}
		t, data, err := pattern.LoadFile(path)
		if data != nil {
			last = data
		}
		if err != nil {
			log.Error("patterns file rejected; the table in use is kept", "why", why, "error", err)
			rejected()
			continue
		}
		if apply(t) {
			log.Info("patterns reloaded", "why", why, "patterns", len(t.Patterns()))
		}
	}
}
