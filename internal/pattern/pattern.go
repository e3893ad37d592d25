// Package pattern holds the table of kernel message prefixes that announce a
// failure, and the Go matcher that applies it exactly as the XDP program
// does.
//
// The table is the one source of truth for both data paths: package loader
// writes it into the program's LPM trie, and the socket receiver and the
// tests match with Table.Match. A pattern is a prefix anchored at the start
// of the message text, after the netconsole header (see TextStart); the
// longest pattern that prefixes the text wins.
package pattern

import (
	"bytes"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/lastgasp/lastgasp/bpf"
)

// Limits shared with the XDP program, from its C enum (bpf/lastgasp.h).
const (
	// MaxPrefixLen is the longest prefix a pattern may have, in bytes.
	MaxPrefixLen = int(bpf.LastgaspLimitsPATTERN_MAX_LEN)
	// MaxPatterns is the most patterns a table may hold.
	MaxPatterns = int(bpf.LastgaspLimitsPATTERNS_MAX)
	// headerScanLen is how far into a payload an extended header's ';' may be.
	headerScanLen = int(bpf.LastgaspLimitsHEADER_SCAN_LEN)
	// bracketMaxLen is the longest "[...]" group skipped before basic text.
	bracketMaxLen = int(bpf.LastgaspLimitsBRACKET_MAX_LEN)
)

// Kind names the failure a pattern announces.
type Kind string

// The failure kinds of the default table.
const (
	KindPanic      Kind = "panic"       // panic(): the kernel stops
	KindSysrq      Kind = "sysrq"       // a crash asked for with sysrq-c
	KindOops       Kind = "oops"        // an Oops: a fault in kernel mode
	KindBug        Kind = "bug"         // BUG(), BUG_ON(), "kernel BUG at"
	KindGPF        Kind = "gpf"         // general protection fault
	KindSoftLockup Kind = "soft_lockup" // a CPU stuck in kernel mode
	KindHardLockup Kind = "hard_lockup" // a CPU stuck with interrupts off
	KindRCUStall   Kind = "rcu_stall"   // an RCU grace period stalled
	KindHungTask   Kind = "hung_task"   // a task blocked in D state too long
	KindOOM        Kind = "oom"         // the OOM killer ran
	KindMCE        Kind = "mce"         // a machine check exception
	KindWarning    Kind = "warning"     // WARN(): the kernel goes on
)

// Pattern is one entry of the table.
type Pattern struct {
	// ID identifies the pattern to the kernel program, which reports it
	// with every match. Never 0 (0 means "no match").
	ID uint32
	// Prefix is matched at the start of the message text, byte for byte.
	Prefix string
	// Kind is the failure the line announces.
	Kind Kind
	// Confirm, if set, must also appear in the line for it to be a
	// trigger: the prefix alone says too little (the data path forwards
	// on the prefix; the detector checks the rest).
	Confirm string
}

// Confirmed reports whether a line this pattern matched is a trigger.
func (p Pattern) Confirmed(text string) bool {
	return p.Confirm == "" || strings.Contains(text, p.Confirm)
}

// defaults is the built-in table. Order is significant only for IDs, which
// are assigned 1, 2, ... in this order by Default.
var defaults = []Pattern{
	{Prefix: PanicPrefix, Kind: KindPanic}, // first two: ParseFile keeps them
	{Prefix: PanicEndPrefix, Kind: KindPanic},
	{Prefix: "sysrq: Trigger a crash", Kind: KindSysrq},
	{Prefix: "Oops: ", Kind: KindOops},
	{Prefix: "BUG: kernel NULL pointer dereference", Kind: KindOops},
	{Prefix: "BUG: unable to handle", Kind: KindOops},
	{Prefix: "Unable to handle kernel", Kind: KindOops},
	{Prefix: "BUG: ", Kind: KindBug},
	{Prefix: "kernel BUG at", Kind: KindBug},
	{Prefix: "general protection fault", Kind: KindGPF},
	{Prefix: "watchdog: BUG: soft lockup", Kind: KindSoftLockup},
	{Prefix: "BUG: soft lockup", Kind: KindSoftLockup},
	{Prefix: "watchdog: Watchdog detected hard LOCKUP", Kind: KindHardLockup},
	{Prefix: "NMI watchdog: Watchdog detected hard LOCKUP", Kind: KindHardLockup},
	{Prefix: "rcu: INFO: rcu_", Kind: KindRCUStall},
	{Prefix: "INFO: rcu_", Kind: KindRCUStall},
	{Prefix: "INFO: task ", Kind: KindHungTask, Confirm: "blocked for more than"}, // other "INFO: task" lines are no failure
	{Prefix: "Out of memory", Kind: KindOOM},
	{Prefix: "mce: ", Kind: KindMCE},
	{Prefix: "Machine check", Kind: KindMCE},
	{Prefix: "WARNING: CPU: ", Kind: KindWarning},
}

// The kernel's own words that it is dying: a table always has them (see
// ParseFile), and the detector recognises them whatever a table says.
const (
	PanicPrefix    = "Kernel panic - not syncing"
	PanicEndPrefix = "---[ end Kernel panic"
)

// PanicReason maps a reason the kernel states in its panic line to the
// kind of failure it names.
type PanicReason struct {
	// Contains is looked for in the panic line's reason, after
	// "Kernel panic - not syncing: ".
	Contains string
	Kind     Kind
}

// panicReasons are the reasons the kernel gives when a report turns into
// a panic (softlockup_panic, hung_task_panic, panic_on_oom, ...), first
// found wins.
var panicReasons = []PanicReason{
	{"softlockup: hung tasks", KindSoftLockup},
	{"hung_task: blocked tasks", KindHungTask},
	{"Hard LOCKUP", KindHardLockup},
	{"Out of memory", KindOOM},
	{"System is deadlocked on memory", KindOOM},
	{"RCU Stall", KindRCUStall},
	{"achine check", KindMCE},
	{"sysrq triggered crash", KindSysrq},
}

// KindOfPanic reads the kind of failure from a panic line, where the
// kernel's stated reason names one.
func KindOfPanic(line string) (Kind, bool) {
	why, ok := strings.CutPrefix(line, PanicPrefix+": ")
	if !ok {
		return "", false
	}
	for _, r := range panicReasons {
		if strings.Contains(why, r.Contains) {
			return r.Kind, true
		}
	}
	return "", false
}

// Table is a validated set of patterns, ready to match. It is immutable.
type Table struct {
	patterns []Pattern
	prefixes [][]byte // patterns[i].Prefix as bytes, for matching
	byID     map[uint32]int
	// byFirst lists, for each first byte, the indexes of the patterns that
	// start with it, longest first: the first prefix found is the longest.
	byFirst [256][]int
}

// Default returns the built-in table.
func Default() *Table {
	ps := make([]Pattern, len(defaults))
	for i, p := range defaults {
		p.ID = uint32(i + 1)
		ps[i] = p
	}
	t, err := NewTable(ps)
	if err != nil {
		panic(fmt.Sprintf("pattern: built-in table is invalid: %v", err))
	}
	return t
}

// NewTable validates ps and builds a table from it: every ID non-zero and
// unique, every prefix between 1 and MaxPrefixLen bytes and unique, every
// kind named, at most MaxPatterns entries.
func NewTable(ps []Pattern) (*Table, error) {
	if len(ps) > MaxPatterns {
		return nil, fmt.Errorf("pattern table: %d patterns, at most %d allowed", len(ps), MaxPatterns)
	}
	t := &Table{
		patterns: append([]Pattern(nil), ps...),
		byID:     make(map[uint32]int, len(ps)),
	}
	prefixes := make(map[string]uint32, len(ps))
	var errs []error
	for i, p := range t.patterns {
		switch {
		case p.ID == 0:
			errs = append(errs, fmt.Errorf("pattern %q: id 0 is reserved for no match", p.Prefix))
		case len(p.Prefix) == 0:
			errs = append(errs, fmt.Errorf("pattern %d: empty prefix", p.ID))
		case len(p.Prefix) > MaxPrefixLen:
			errs = append(errs, fmt.Errorf("pattern %d: prefix is %d bytes, at most %d allowed", p.ID, len(p.Prefix), MaxPrefixLen))
		case p.Kind == "":
			errs = append(errs, fmt.Errorf("pattern %d %q: no kind", p.ID, p.Prefix))
		}
		if _, dup := t.byID[p.ID]; dup {
			errs = append(errs, fmt.Errorf("pattern %d: duplicate id", p.ID))
		}
		if other, dup := prefixes[p.Prefix]; dup {
			errs = append(errs, fmt.Errorf("pattern %d: prefix %q already has id %d", p.ID, p.Prefix, other))
		}
		t.byID[p.ID] = i
		prefixes[p.Prefix] = p.ID
		t.prefixes = append(t.prefixes, []byte(p.Prefix))
		if len(p.Prefix) > 0 {
			t.byFirst[p.Prefix[0]] = append(t.byFirst[p.Prefix[0]], i)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	for _, idx := range t.byFirst {
		sort.SliceStable(idx, func(a, b int) bool {
			return len(t.patterns[idx[a]].Prefix) > len(t.patterns[idx[b]].Prefix)
		})
	}
	return t, nil
}

// Patterns returns a copy of the table's patterns.
func (t *Table) Patterns() []Pattern {
	return append([]Pattern(nil), t.patterns...)
}

// ByID returns the pattern with the given id.
func (t *Table) ByID(id uint32) (Pattern, bool) {
	i, ok := t.byID[id]
	if !ok {
		return Pattern{}, false
	}
	return t.patterns[i], true
}

// Match returns the longest pattern that prefixes the message text of a
// netconsole payload, as the XDP program would: the text is found by
// TextStart and only its first MaxPrefixLen bytes are compared. A payload
// whose text cannot be found (LongHeader) matches nothing.
func (t *Table) Match(payload []byte) (Pattern, bool) {
	if LongHeader(payload) {
		return Pattern{}, false
	}
	return t.MatchText(payload[TextStart(payload):])
}

// LongHeader reports whether a payload starts like an extended header (a
// digit) and has neither ';' nor ' ' in all of its first HEADER_SCAN_LEN
// bytes: a header too long to find the end of, or no header at all. The
// XDP program matches such a line against nothing, counts it in
// long_header and passes it (find_text's TEXT_UNKNOWN).
func LongHeader(payload []byte) bool {
	if len(payload) < headerScanLen || payload[0] < '0' || payload[0] > '9' {
		return false
	}
	return bytes.IndexAny(payload[1:headerScanLen], "; ") < 0
}

// MatchText returns the longest pattern that prefixes a message text
// (already stripped of its netconsole header), comparing, as the XDP
// program does, only its first MaxPrefixLen bytes.
func (t *Table) MatchText(text []byte) (Pattern, bool) {
	if len(text) == 0 {
		return Pattern{}, false
	}
	if len(text) > MaxPrefixLen {
		text = text[:MaxPrefixLen]
	}
	for _, i := range t.byFirst[text[0]] {
		if bytes.HasPrefix(text, t.prefixes[i]) {
			return t.patterns[i], true
		}
	}
	return Pattern{}, false
}

// TextStart returns the offset of the message text in a netconsole payload.
// It is the Go twin of find_text in bpf/lastgasp.c, rule for rule:
//
//   - Extended format, "<level>,<seq>,<usec>,<flag>[,...];text": the payload
//     starts with a digit and holds a ';' within its first HEADER_SCAN_LEN
//     bytes, with no space before it. The text follows the ';'.
//   - Basic format, "[    3.053091] text": up to two "[...]" groups of at
//     most BRACKET_MAX_LEN bytes each, brackets included, then one space.
//     A '[' whose ']' is out of reach is text.
//   - Anything else starts with its text.
func TextStart(payload []byte) int {
	n := min(len(payload), headerScanLen)
	if n == 0 {
		return 0
	}
	if c := payload[0]; c >= '0' && c <= '9' {
		for i := 1; i < n; i++ {
			switch payload[i] {
			case ';':
				return i + 1
			case ' ':
				return 0
			}
		}
		return 0
	}
	off := 0
	for range 2 {
		if off >= n || payload[off] != '[' {
			break
		}
		end := min(off+bracketMaxLen, n)
		closing := bytes.IndexByte(payload[off+1:end], ']')
		if closing < 0 {
			break
		}
		off += 1 + closing + 1
	}
	if off > 0 && off < n && payload[off] == ' ' {
		off++
	}
	return off
}

// ReportEndPrefix starts the kernel's end marker of a report: "---[ end
// trace 0000000000000000 ]---" after an Oops, a BUG or a WARN, "---[ end
// Kernel panic - not syncing: ... ]---" after a panic.
const ReportEndPrefix = "---[ end "

// ReportEnd reports whether a netconsole payload's message text starts
// with ReportEndPrefix, as the XDP program sees it (is_end_marker in
// bpf/lastgasp.c): the text found by TextStart, none for a LongHeader.
func ReportEnd(payload []byte) bool {
	if LongHeader(payload) {
		return false
	}
	return bytes.HasPrefix(payload[TextStart(payload):], []byte(ReportEndPrefix))
}
