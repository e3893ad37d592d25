// Package segment names and lists the numbered files that the journal and
// the spool are made of: PREFIX<sequence, 20 digits>SUFFIX in one
// directory, written one after the other.
package segment

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// Files are a directory's segments of one kind.
type Files struct {
	Dir, Prefix, Suffix string
}

// Path returns the path of segment seq.
func (f Files) Path(seq uint64) string {
	return filepath.Join(f.Dir, fmt.Sprintf("%s%020d%s", f.Prefix, seq, f.Suffix))
}

// List returns the sequence numbers of the segments in the directory, in
// order; other files are ignored.
func (f Files) List() ([]uint64, error) {
	entries, err := os.ReadDir(f.Dir)
	if err != nil {
		return nil, err
	}
	var seqs []uint64
	for _, e := range entries {
		name, ok := strings.CutPrefix(e.Name(), f.Prefix)
		if !ok || !e.Type().IsRegular() {
			continue
		}
		if name, ok = strings.CutSuffix(name, f.Suffix); !ok {
			continue
		}
		if seq, err := strconv.ParseUint(name, 10, 64); err == nil {
			seqs = append(seqs, seq)
		}
	}
	slices.Sort(seqs)
	return seqs, nil
}
