package pattern

import (
	"fmt"
	"os"
	"slices"

	"sigs.k8s.io/yaml"
)

// File is a patterns file (lastgasp run --patterns), YAML or JSON:
//
//	# replace: true drops the built-in table; false (the default) adds
//	# to it, and a prefix the built-in table has takes the file's kind.
//	replace: false
//	patterns:
//	  - prefix: "nvme nvme0: controller is down"
//	    kind: mce
//
// A kind is one of the kinds this package names (KindPanic ...): the
// detector's rules are written for them. A prefix is matched at the start
// of the message text, byte for byte, at most MaxPrefixLen bytes.
//
// A pattern opens an incident and names its kind; it cannot make one
// fatal. Only the kernel's own "Kernel panic - not syncing" line (or its
// end marker) does that, so a patterns file cannot turn a report into a
// node deletion; nor can it drop them: a table that replaces the built-in
// one keeps those two patterns, so that the data path forwards them.
//
// A pattern may name a confirmation: text that must also appear in the
// line (the built-in hung-task pattern "INFO: task " confirms with
// "blocked for more than"):
//
//	patterns:
//	  - prefix: "nvme nvme0: "
//	    kind: mce
//	    confirm: "controller is down"
type File struct {
	// Replace drops the built-in table.
	Replace bool `json:"replace"`
	// Patterns are the file's patterns.
	Patterns []FilePattern `json:"patterns"`
}

// FilePattern is one pattern of a File.
type FilePattern struct {
	Prefix  string `json:"prefix"`
	Kind    Kind   `json:"kind"`
	Confirm string `json:"confirm,omitempty"`
}

// kinds are the kinds a pattern may have.
var kinds = []Kind{KindPanic, KindSysrq, KindOops, KindBug, KindGPF, KindSoftLockup,
	KindHardLockup, KindRCUStall, KindHungTask, KindOOM, KindMCE, KindWarning}

// maxFileBytes bounds a patterns file: MaxPatterns patterns of
// MaxPrefixLen bytes, with room for YAML around them.
const maxFileBytes = 1 << 20

// LoadFile reads a patterns file and builds the table it describes; it
// returns the file's bytes too, for a watcher to compare with.
func LoadFile(path string) (*Table, []byte, error) {
	info, err := os.Stat(path)
	if err != nil {
		return nil, nil, fmt.Errorf("patterns file: %w", err)
	}
	if info.Size() > maxFileBytes {
		return nil, nil, fmt.Errorf("patterns file %s: %d bytes, at most %d", path, info.Size(), maxFileBytes)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("patterns file: %w", err)
	}
	t, err := ParseFile(data)
	if err != nil {
		return nil, data, fmt.Errorf("patterns file %s: %w", path, err)
	}
	return t, data, nil
}

// ParseFile builds the table a patterns file describes. Unless the file
// replaces them, the built-in patterns keep their ids (so lines already
// matched keep their meaning); the file's other patterns are numbered
// after them, in file order.
func ParseFile(data []byte) (*Table, error) {
	var f File
	if err := yaml.UnmarshalStrict(data, &f); err != nil {
		return nil, err
	}
	if f.Replace && len(f.Patterns) == 0 {
		return nil, fmt.Errorf("replace: true and no patterns: the detector would fire only on panics")
	}
	var ps []Pattern
	if !f.Replace {
		ps = Default().Patterns()
	}
	next := uint32(len(defaults) + 1)
	seen := make(map[string]bool, len(f.Patterns))
	for i, fp := range f.Patterns {
		if !slices.Contains(kinds, fp.Kind) {
			return nil, fmt.Errorf("pattern %d (%q): kind %q: want one of %v", i+1, fp.Prefix, fp.Kind, kinds)
		}
		if seen[fp.Prefix] {
			return nil, fmt.Errorf("pattern %d: prefix %q given twice", i+1, fp.Prefix)
		}
		seen[fp.Prefix] = true
		if j := slices.IndexFunc(ps, func(p Pattern) bool { return p.Prefix == fp.Prefix }); j >= 0 {
			ps[j].Kind, ps[j].Confirm = fp.Kind, fp.Confirm // a built-in pattern, re-kinded
			continue
		}
		ps = append(ps, Pattern{ID: next, Prefix: fp.Prefix, Kind: fp.Kind, Confirm: fp.Confirm})
		next++
	}
	// The kernel's dying words stay, with their built-in ids, whatever
	// the file replaced.
	for i, d := range defaults[:2] {
		if !slices.ContainsFunc(ps, func(p Pattern) bool { return p.Prefix == d.Prefix }) {
			d.ID = uint32(i + 1)
			ps = append(ps, d)
		}
	}
	return NewTable(ps)
}
