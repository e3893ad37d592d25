package pattern_test

import (
	"strings"
	"testing"

	"github.com/lastgasp/lastgasp/internal/pattern"
)

func TestNewTableRejects(t *testing.T) {
	long := strings.Repeat("x", pattern.MaxPrefixLen+1)
	cases := map[string][]pattern.Pattern{
		"id 0":             {{ID: 0, Prefix: "a", Kind: pattern.KindPanic}},
		"empty prefix":     {{ID: 1, Prefix: "", Kind: pattern.KindPanic}},
		"prefix too long":  {{ID: 1, Prefix: long, Kind: pattern.KindPanic}},
		"no kind":          {{ID: 1, Prefix: "a"}},
		"duplicate id":     {{ID: 1, Prefix: "a", Kind: pattern.KindPanic}, {ID: 1, Prefix: "b", Kind: pattern.KindPanic}},
		"duplicate prefix": {{ID: 1, Prefix: "a", Kind: pattern.KindPanic}, {ID: 2, Prefix: "a", Kind: pattern.KindOops}},
		"too many":         make([]pattern.Pattern, pattern.MaxPatterns+1),
	}
	for name, ps := range cases {
		if _, err := pattern.NewTable(ps); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	ok := []pattern.Pattern{{ID: 7, Prefix: strings.Repeat("y", pattern.MaxPrefixLen), Kind: pattern.KindBug}}
	if _, err := pattern.NewTable(ok); err != nil {
		t.Errorf("a prefix of exactly %d bytes: %v", pattern.MaxPrefixLen, err)
	}
}

func TestLongestPrefixWins(t *testing.T) {
	tb := pattern.Default()
	for line, want := range map[string]string{
		"BUG: kernel NULL pointer dereference, address: 0":     "BUG: kernel NULL pointer dereference",
		"BUG: soft lockup - CPU#1 stuck for 23s!":              "BUG: soft lockup",
		"BUG: scheduling while atomic":                         "BUG: ",
		"NMI watchdog: Watchdog detected hard LOCKUP on cpu 1": "NMI watchdog: Watchdog detected hard LOCKUP",
	} {
		p, ok := tb.Match([]byte(line))
		if !ok || p.Prefix != want {
			t.Errorf("%q: matched %q, want %q", line, p.Prefix, want)
		}
	}
}

func TestTextStart(t *testing.T) {
	cases := map[string]int{
		"":                                       0,
		"text":                                   0,
		"[    3.053091] text":                    15,
		"[    3.053091]text":                     14,
		"[    3.053091][  T114] text":            23,
		"[a][b][c] text":                         6,
		"[" + strings.Repeat(" ", 40) + "] text": 0,
		"4,1,2,-;text":                           8,
		"4,1,2,- ;text":                          0,
		"4" + strings.Repeat(",", 100) + ";text": 102,
		"4" + strings.Repeat(",", 200) + ";text": 0,
		"x,1,2,-;text":                           0,
	}
	for in, want := range cases {
		if got := pattern.TextStart([]byte(in)); got != want {
			t.Errorf("TextStart(%q) = %d, want %d", in, got, want)
		}
	}
}

func TestDefaultTableIDs(t *testing.T) {
	tb := pattern.Default()
	for i, p := range tb.Patterns() {
		if p.ID != uint32(i+1) {
			t.Errorf("pattern %q has id %d, want %d", p.Prefix, p.ID, i+1)
		}
		if got, ok := tb.ByID(p.ID); !ok || got != p {
			t.Errorf("ByID(%d) = %+v, %v", p.ID, got, ok)
		}
	}
}
