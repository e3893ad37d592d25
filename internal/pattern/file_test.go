package pattern_test

import (
	"strings"
	"testing"

	"github.com/lastgasp/lastgasp/internal/pattern"
)

func TestParseFile(t *testing.T) {
	n := len(pattern.Default().Patterns())
	t.Run("adds", func(t *testing.T) {
		tab, err := pattern.ParseFile([]byte("patterns:\n  - prefix: \"nvme nvme0: controller is down\"\n    kind: mce\n  - prefix: \"WARNING: CPU: \"\n    kind: oops\n"))
		if err != nil {
			t.Fatal(err)
		}
		if got := len(tab.Patterns()); got != n+1 {
			t.Fatalf("%d patterns, want %d", got, n+1)
		}
		p, ok := tab.Match([]byte("[   1.0] nvme nvme0: controller is down; will reset"))
		if !ok || p.Kind != pattern.KindMCE || p.ID != uint32(n+1) {
			t.Errorf("new pattern: %+v %v", p, ok)
		}
		p, ok = tab.Match([]byte("WARNING: CPU: 1 PID: 2 at x"))
		if !ok || p.Kind != pattern.KindOops || p.ID != uint32(n) {
			t.Errorf("re-kinded built-in pattern: %+v %v", p, ok)
		}
		if p, ok := tab.Match([]byte("Kernel panic - not syncing: x")); !ok || p.ID != 1 {
			t.Errorf("built-in pattern lost or renumbered: %+v %v", p, ok)
		}
	})
	t.Run("replaces", func(t *testing.T) {
		tab, err := pattern.ParseFile([]byte(`{"replace": true, "patterns": [{"prefix": "Kernel panic - not syncing", "kind": "panic"}]}`))
		if err != nil {
			t.Fatal(err)
		}
		if len(tab.Patterns()) != 2 {
			t.Errorf("%d patterns, want the file's and the end marker's", len(tab.Patterns()))
		}
		if _, ok := tab.Match([]byte("Oops: 0000 [#1]")); ok {
			t.Error("a replaced built-in pattern still matches")
		}
	})
	t.Run("keeps the panic line", func(t *testing.T) {
		tab, err := pattern.ParseFile([]byte("replace: true\npatterns:\n  - {prefix: \"Oops: \", kind: oops}\n"))
		if err != nil {
			t.Fatal(err)
		}
		for id, line := range map[uint32]string{1: "Kernel panic - not syncing: Fatal exception", 2: "---[ end Kernel panic - not syncing: Fatal exception ]---"} {
			if p, ok := tab.Match([]byte(line)); !ok || p.ID != id || p.Kind != pattern.KindPanic {
				t.Errorf("%q: %+v %v, want the built-in pattern %d", line, p, ok, id)
			}
		}
	})
	t.Run("confirms", func(t *testing.T) {
		tab, err := pattern.ParseFile([]byte("patterns:\n  - prefix: \"nvme nvme0: \"\n    kind: mce\n    confirm: controller is down\n"))
		if err != nil {
			t.Fatal(err)
		}
		p, ok := tab.Match([]byte("nvme nvme0: I/O 12 QID 3 timeout, aborting"))
		if !ok || p.Confirmed("nvme nvme0: I/O 12 QID 3 timeout, aborting") || !p.Confirmed("nvme nvme0: controller is down; will reset") {
			t.Errorf("%+v %v: want a match confirmed only by its confirmation", p, ok)
		}
		p, _ = tab.Match([]byte("INFO: task x:1 blocked for more than 120 seconds."))
		if p.Confirm != "blocked for more than" {
			t.Errorf("the built-in hung-task confirmation: %+v", p)
		}
	})
	for name, bad := range map[string]string{
		"unknown key":   "patterns: []\nreplce: true\n",
		"unknown kind":  "patterns:\n  - prefix: x\n    kind: fatal\n",
		"no kind":       "patterns:\n  - prefix: x\n",
		"empty prefix":  "patterns:\n  - prefix: \"\"\n    kind: panic\n",
		"long prefix":   "patterns:\n  - prefix: " + strings.Repeat("x", pattern.MaxPrefixLen+1) + "\n    kind: panic\n",
		"twice":         "patterns:\n  - {prefix: x, kind: oops}\n  - {prefix: x, kind: bug}\n",
		"default twice": "patterns:\n  - {prefix: \"Oops: \", kind: oops}\n  - {prefix: \"Oops: \", kind: bug}\n",
		"nothing":       "replace: true\n",
		"not yaml":      "patterns: [\n",
		"wrong type":    "patterns: 3\n",
	} {
		if _, err := pattern.ParseFile([]byte(bad)); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}
