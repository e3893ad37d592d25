// Package journal keeps the incidents a collector has taken on, on disk,
// so that a crash loses none of them: each incident is appended (and
// fsynced) before anything is done about it, and marked done once it is
// finished; on start-up the incidents never marked done are handed back to
// be finished.
//
// The journal is a directory of segments, files of JSON lines named
// incidents-<sequence>.jsonl. Only the newest segment is written to. Each
// record is one line:
//
//	{"op":"begin","at":"...","incident":{...}}       taken on
//	{"op":"done","at":"...","id":"...","outcome":"..."} finished
//
// Size is bounded by rotation: a new segment starts with a "begin" record
// for every unfinished incident and a "done" record (no outcome) for
// every id finished lately, so older segments hold only history and all
// but the newest Config.Keep are removed, and however many restarts
// later a replayed spool never begins a finished incident again. Every Open starts a new
// segment the same way, so a record torn by a crash mid-write is never
// appended to: it stays, alone and counted, in an old segment.
package journal

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/lastgasp/lastgasp/internal/detect"
	"github.com/lastgasp/lastgasp/internal/segment"
)

// Config configures a journal.
type Config struct {
	// Dir is the journal's directory; it is created if missing.
	Dir string
	// MaxBytes is the size past which the current segment is rotated.
	// Default 16 MiB.
	MaxBytes int64
	// Keep is how many segments are kept, the current one included.
	// Default 2 (the current one and the history before it).
	Keep int
}

// Defaults.
const (
	DefaultMaxBytes = 16 << 20
	DefaultKeep     = 2
)

// Record operations.
const (
	opBegin = "begin"
	opDone  = "done"
)

// record is one line of a segment.
type record struct {
	Op       string           `json:"op"`
	At       time.Time        `json:"at"`
	Incident *detect.Incident `json:"incident,omitempty"` // begin
	ID       string           `json:"id,omitempty"`       // done
	Outcome  string           `json:"outcome,omitempty"`  // done
}

// Stats are what the journal has seen.
type Stats struct {
	// Corrupt counts lines found unreadable on Open (a record torn by a
	// crash, or damage): skipped.
	Corrupt uint64
	// Resumed counts the unfinished incidents Open handed back.
	Resumed uint64
	// Rotations counts segment rotations, start-up included.
	Rotations uint64
	// WriteErrors counts records that could not be written or synced.
	WriteErrors uint64
}

// Journal is an open journal. Its methods are safe for concurrent use.
type Journal struct {
	cfg Config

	mu       sync.Mutex
	f        *os.File
	seq      uint64
	size     int64 // of the current segment
	baseSize int64 // of the unfinished incidents copied into it
	open     map[string]detect.Incident
	order    []string // ids in open, oldest first (may hold finished ids)
	finished recent   // ids finished lately, so a replay never begins them again
	torn     bool     // a write failed part-way: rotate before the next
	// unwritable is why no segment could be started at Open, until Retry.
	unwritable error
	stats      Stats
}

// segmentPrefix and segmentSuffix frame a segment's sequence number.
const (
	segmentPrefix = "incidents-"
	segmentSuffix = ".jsonl"
)

// Open reads the journal in cfg.Dir, starts a new segment holding its
// unfinished incidents, and returns the journal and those incidents,
// oldest first.
func Open(cfg Config) (*Journal, []detect.Incident, error) {
	if cfg.MaxBytes <= 0 {
		cfg.MaxBytes = DefaultMaxBytes
	}
	if cfg.Keep <= 0 {
		cfg.Keep = DefaultKeep
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("journal: %w", err)
	}
	j := &Journal{cfg: cfg, open: map[string]detect.Incident{}, finished: newRecent(rememberFinished)}
	seqs, err := j.segments()
	if err != nil {
		return nil, nil, err
	}
	for _, seq := range seqs {
		if err := j.replay(seq); err != nil {
			return nil, nil, err
		}
		j.seq = seq
	}
	j.compactOrder()
	j.stats.Resumed = uint64(len(j.order))
	// A segment that cannot be written now (a full disk) does not fail
	// the start: the journal is not writable until Retry succeeds, and
	// Writable says why.
	j.unwritable = j.rotate()
	return j, j.unfinished(), nil
}

// Writable returns nil when the journal can take incidents, or why not:
// its segment could not be started (a full disk, a read-only mount).
// Records then fail until Retry succeeds.
func (j *Journal) Writable() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.unwritable
}

// Retry starts a segment again if the journal is not writable, and
// returns Writable's answer.
func (j *Journal) Retry() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.unwritable != nil && j.f == nil {
		j.unwritable = j.rotate()
	}
	return j.unwritable
}

// segments lists the sequence numbers of the segments in the directory,
// in order.
func (j *Journal) segments() ([]uint64, error) {
	seqs, err := j.files().List()
	if err != nil {
		return nil, fmt.Errorf("journal: %w", err)
	}
	return seqs, nil
}

// files are the directory's segments.
func (j *Journal) files() segment.Files {
	return segment.Files{Dir: j.cfg.Dir, Prefix: segmentPrefix, Suffix: segmentSuffix}
}

func (j *Journal) path(seq uint64) string { return j.files().Path(seq) }

// maxRecordBytes bounds one line read back: an incident holds at most a
// few hundred lines of at most a few KiB.
const maxRecordBytes = 16 << 20

// replay applies one segment's records to the set of unfinished incidents.
func (j *Journal) replay(seq uint64) error {
	f, err := os.Open(j.path(seq))
	if err != nil {
		return fmt.Errorf("journal: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), maxRecordBytes)
	for sc.Scan() {
		var r record
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			j.stats.Corrupt++
			continue
		}
		switch {
		case r.Op == opBegin && r.Incident != nil && r.Incident.ID != "":
			if _, known := j.open[r.Incident.ID]; !known {
				j.order = append(j.order, r.Incident.ID)
			}
			j.open[r.Incident.ID] = *r.Incident
		case r.Op == opDone && r.ID != "":
			delete(j.open, r.ID)
			j.finished.add(r.ID)
		default:
			j.stats.Corrupt++
		}
	}
	if err := sc.Err(); err != nil {
		// A line longer than any record we write: damage. The records
		// after it in this segment are lost to this read, and counted.
		j.stats.Corrupt++
	}
	return nil
}

// compactOrder drops finished ids from order, and repeats (an incident
// begun, done and begun again is listed twice until compacted).
func (j *Journal) compactOrder() {
	seen := make(map[string]bool, len(j.open))
	j.order = slices.DeleteFunc(j.order, func(id string) bool {
		_, open := j.open[id]
		if !open || seen[id] {
			return true
		}
		seen[id] = true
		return false
	})
}

// unfinished returns the unfinished incidents, oldest first.
func (j *Journal) unfinished() []detect.Incident {
	incs := make([]detect.Incident, 0, len(j.order))
	for _, id := range j.order {
		incs = append(incs, j.open[id])
	}
	return incs
}

// rotate starts segment seq+1 with the unfinished incidents and removes
// the segments past Keep. The new segment is complete and synced before
// any old one goes; a segment that could not be completed is removed, so
// the next rotation can try again.
func (j *Journal) rotate() error {
	j.compactOrder()
	seq := j.seq + 1
	path := j.path(seq)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("journal: new segment: %w", err)
	}
	abandon := func(err error) error {
		f.Close()
		os.Remove(path)
		return err
	}
	var buf []byte
	now := time.Now()
	for _, id := range j.order {
		inc := j.open[id]
		line, err := json.Marshal(record{Op: opBegin, At: now, Incident: &inc})
		if err != nil {
			return abandon(fmt.Errorf("journal: encode incident %s: %w", id, err))
		}
		buf = append(append(buf, line...), '\n')
	}
	// The finished ids, oldest first: the memory that keeps a replay
	// from acting again on an incident finished before this rotation.
	for _, id := range j.finished.list() {
		line, err := json.Marshal(record{Op: opDone, At: now, ID: id})
		if err != nil {
			return abandon(fmt.Errorf("journal: encode done %s: %w", id, err))
		}
		buf = append(append(buf, line...), '\n')
	}
	if _, err := f.Write(buf); err != nil {
		return abandon(fmt.Errorf("journal: new segment: %w", err))
	}
	if err := f.Sync(); err != nil {
		return abandon(fmt.Errorf("journal: new segment: %w", err))
	}
	if err := syncDir(j.cfg.Dir); err != nil {
		return abandon(err)
	}
	if j.f != nil {
		j.f.Close()
	}
	j.f, j.seq, j.size, j.baseSize, j.torn = f, seq, int64(len(buf)), int64(len(buf)), false
	j.stats.Rotations++

	// Old segments hold only history now: one that cannot be listed or
	// removed is left for the next rotation, and does not fail this one.
	seqs, err := j.segments()
	if err != nil {
		return nil
	}
	for len(seqs) > j.cfg.Keep {
		os.Remove(j.path(seqs[0]))
		seqs = seqs[1:]
	}
	return nil
}

// syncDir makes a new file's directory entry durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("journal: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("journal: sync %s: %w", dir, err)
	}
	return nil
}

// Begin records that inc is taken on; it returns once the record is on
// disk. An incident already unfinished, or finished lately, is not
// written again.
func (j *Journal) Begin(inc detect.Incident) error {
	_, err := j.BeginAll([]detect.Incident{inc})
	return err
}

// BeginAll records that the incidents are taken on, with one fsync for
// all of them (a group commit: a flood of incidents costs one sync a
// batch, not one each), and returns once they are on disk. It returns
// the incidents newly taken on, in order: those neither unfinished (a
// previous run's, being resumed) nor finished lately (assembled again
// from replayed lines) are to be acted on. When they cannot be written,
// it returns them all the same, with the error: the caller acts on them
// without the journal, and never on an incident it knows of.
func (j *Journal) BeginAll(incs []detect.Incident) ([]detect.Incident, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	var taken []detect.Incident
	for _, inc := range incs {
		if _, known := j.open[inc.ID]; known || j.finished.has(inc.ID) || slices.ContainsFunc(taken, func(t detect.Incident) bool { return t.ID == inc.ID }) {
			continue
		}
		taken = append(taken, inc)
	}
	if len(taken) == 0 {
		return nil, nil
	}
	for _, inc := range taken {
		if err := j.append(record{Op: opBegin, At: time.Now(), Incident: &inc}); err != nil {
			j.stats.WriteErrors++
			return taken, fmt.Errorf("journal: begin %s: %w", inc.ID, err)
		}
	}
	if err := j.sync(); err != nil {
		j.stats.WriteErrors++
		return taken, fmt.Errorf("journal: begin %d incidents: %w", len(taken), err)
	}
	for _, inc := range taken {
		j.open[inc.ID] = inc
		j.order = append(j.order, inc.ID)
	}
	return taken, nil
}

// Done records that the incident id is finished, with what was done. The
// record is written (it survives the process being killed) but not
// synced: one lost to a power failure only makes the next start resume
// the incident, whose every action is idempotent.
func (j *Journal) Done(id, outcome string) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if _, known := j.open[id]; !known {
		// Acted on without the journal (it was not writable): remember
		// it finished all the same, so a replay does not act again.
		j.finished.add(id)
		return nil
	}
	if err := j.append(record{Op: opDone, At: time.Now(), ID: id, Outcome: outcome}); err != nil {
		j.stats.WriteErrors++
		return fmt.Errorf("journal: done %s: %w", id, err)
	}
	delete(j.open, id)
	j.finished.add(id)
	if len(j.order) > 2*len(j.open)+64 {
		j.compactOrder()
	}
	return nil
}

// Finished reports whether the incident id was finished lately (in the
// segments kept, or since Open).
func (j *Journal) Finished(id string) bool {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.finished.has(id)
}

// append writes one record, rotating first if the segment is full; sync
// puts it on disk. The rotation threshold grows with the unfinished
// incidents copied into the segment, so that a large backlog cannot make
// every write rotate.
func (j *Journal) append(r record) error {
	if j.unwritable != nil {
		return fmt.Errorf("not writable: %w", j.unwritable)
	}
	if j.f == nil {
		return errors.New("journal is closed")
	}
	if j.torn || j.size > max(j.cfg.MaxBytes, 2*j.baseSize) {
		if err := j.rotate(); err != nil {
			return err
		}
	}
	line, err := json.Marshal(r)
	if err != nil {
		return err
	}
	n, err := j.f.Write(append(line, '\n'))
	j.size += int64(n)
	if err != nil {
		// The record may be half written: never append after it.
		j.torn = true
	}
	return err
}

// sync puts what was appended on disk.
func (j *Journal) sync() error {
	if err := j.f.Sync(); err != nil {
		// What the segment holds is unknown: never append after it.
		j.torn = true
		return err
	}
	return nil
}

// Unfinished returns how many incidents are taken on and not finished.
func (j *Journal) Unfinished() int {
	j.mu.Lock()
	defer j.mu.Unlock()
	return len(j.open)
}

// Stats returns what the journal has seen.
func (j *Journal) Stats() Stats {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.stats
}

// Close closes the journal; unfinished incidents stay in it.
func (j *Journal) Close() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.f == nil {
		return nil
	}
	err := j.f.Close()
	j.f = nil
	return err
}

// rememberFinished is how many finished incident ids the journal
// remembers: far more than a collector finishes in the spool's window.
const rememberFinished = 8192

// recent is a bounded set of ids: past its size the oldest is forgotten.
type recent struct {
	ids  map[string]struct{}
	ring []string
	next int
}

func newRecent(n int) recent {
	return recent{ids: make(map[string]struct{}, n), ring: make([]string, n)}
}

func (r *recent) add(id string) {
	if _, ok := r.ids[id]; ok {
		return
	}
	if old := r.ring[r.next]; old != "" {
		delete(r.ids, old)
	}
	r.ring[r.next] = id
	r.ids[id] = struct{}{}
	r.next = (r.next + 1) % len(r.ring)
}

// list returns the ids, oldest first.
func (r *recent) list() []string {
	ids := make([]string, 0, len(r.ids))
	for i := range r.ring {
		if id := r.ring[(r.next+i)%len(r.ring)]; id != "" {
			ids = append(ids, id)
		}
	}
	return ids
}

func (r *recent) has(id string) bool {
	_, ok := r.ids[id]
	return ok
}
