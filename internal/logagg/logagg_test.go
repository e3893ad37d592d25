package logagg

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// A flood of one kind writes its burst, then one line with the count;
// another kind has its own burst.
func TestFlood(t *testing.T) {
	var buf bytes.Buffer
	a := New(slog.New(slog.NewJSONHandler(&buf, nil)), time.Hour, 20)
	for range 300 {
		a.Log("forged", slog.LevelInfo, "incident refused", "source", "10.0.0.1")
	}
	a.Log("other", slog.LevelWarn, "something else")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	a.Run(ctx) // sums up what is left
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 22 {
		t.Fatalf("%d lines, want 20 + 1 + the summary:\n%s", len(lines), buf.String())
	}
	var last map[string]any
	if err := json.Unmarshal([]byte(lines[21]), &last); err != nil {
		t.Fatal(err)
	}
	if last["key"] != "forged" || last["suppressed"] != float64(280) {
		t.Errorf("summary %v", last)
	}
}

// A new window writes a new burst, after the summary of the last.
func TestWindows(t *testing.T) {
	var buf bytes.Buffer
	a := New(slog.New(slog.NewJSONHandler(&buf, nil)), 50*time.Millisecond, 1)
	a.Log("k", slog.LevelInfo, "m")
	a.Log("k", slog.LevelInfo, "m")
	time.Sleep(60 * time.Millisecond) // the window's end
	a.Log("k", slog.LevelInfo, "m")
	if n := strings.Count(buf.String(), "\n"); n != 3 {
		t.Errorf("%d lines, want the first, the summary of one more, and the first of the next window:\n%s", n, buf.String())
	}
}
