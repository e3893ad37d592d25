package journal

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lastgasp/lastgasp/internal/detect"
	"github.com/lastgasp/lastgasp/internal/pattern"
)

func incident(i int) detect.Incident {
	return detect.Incident{
		ID:      fmt.Sprintf("inc-%03d", i),
		Source:  netip.MustParseAddr("10.0.0.7"),
		Kind:    pattern.KindPanic,
		Fatal:   true,
		Reason:  "Kernel panic - not syncing: sysrq triggered crash",
		Cause:   "sysrq: Trigger a crash",
		PanicAt: time.Date(2026, 11, 23, 10, 0, i, 0, time.UTC),
		First:   time.Date(2026, 11, 23, 10, 0, i, 0, time.UTC),
		Lines:   []string{"[   12.000000] sysrq: Trigger a crash", "[   12.000001] Kernel panic - not syncing: sysrq triggered crash"},
	}
}

func open(t *testing.T, cfg Config) (*Journal, []detect.Incident) {
	t.Helper()
	j, unfinished, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { j.Close() })
	return j, unfinished
}

func ids(incs []detect.Incident) string {
	var s []string
	for _, inc := range incs {
		s = append(s, inc.ID)
	}
	return strings.Join(s, ",")
}

func TestResumeUnfinished(t *testing.T) {
	dir := t.TempDir()
	j, unfinished := open(t, Config{Dir: dir})
	if len(unfinished) != 0 {
		t.Fatalf("new journal: %d unfinished", len(unfinished))
	}
	for i := range 4 {
		if err := j.Begin(incident(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := j.Begin(incident(1)); err != nil { // again: one incident
		t.Fatal(err)
	}
	if err := j.Done("inc-002", "cleaned up"); err != nil {
		t.Fatal(err)
	}
	if err := j.Done("never-begun", "cleaned up"); err != nil {
		t.Fatal(err)
	}
	j.Close() // as a crash would leave it: nothing more is written

	j2, unfinished := open(t, Config{Dir: dir})
	if got := ids(unfinished); got != "inc-000,inc-001,inc-003" {
		t.Fatalf("unfinished %s", got)
	}
	if got, want := unfinished[0], incident(0); got.Reason != want.Reason || !got.PanicAt.Equal(want.PanicAt) || got.Source != want.Source || len(got.Lines) != 2 || !got.Fatal {
		t.Errorf("incident read back as %+v", got)
	}
	for _, id := range []string{"inc-000", "inc-001", "inc-003"} {
		if err := j2.Done(id, "cleaned up"); err != nil {
			t.Fatal(err)
		}
	}
	j2.Close()
	_, unfinished = open(t, Config{Dir: dir})
	if len(unfinished) != 0 {
		t.Fatalf("all done, yet %s unfinished", ids(unfinished))
	}
}

// A crash mid-write leaves a torn last line: it is counted and skipped,
// and never written after.
func TestTornRecord(t *testing.T) {
	dir := t.TempDir()
	j, _ := open(t, Config{Dir: dir})
	for i := range 3 {
		if err := j.Begin(incident(i)); err != nil {
			t.Fatal(err)
		}
	}
	j.Close()
	seg := j.path(j.seq)
	b, err := os.ReadFile(seg)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(seg, b[:len(b)-40], 0o600); err != nil { // the third record, torn
		t.Fatal(err)
	}

	j2, unfinished := open(t, Config{Dir: dir})
	if got := ids(unfinished); got != "inc-000,inc-001" {
		t.Fatalf("unfinished %s", got)
	}
	if s := j2.Stats(); s.Corrupt != 1 || s.Resumed != 2 {
		t.Errorf("stats %+v, want 1 corrupt, 2 resumed", s)
	}
	if err := j2.Begin(incident(2)); err != nil { // the collector hears it again
		t.Fatal(err)
	}
	j2.Close()
	_, unfinished = open(t, Config{Dir: dir})
	if got := ids(unfinished); got != "inc-000,inc-001,inc-002" {
		t.Fatalf("after the torn record: unfinished %s", got)
	}
}

// Hostile or damaged files are skipped and counted, never a crash.
func TestDamagedSegments(t *testing.T) {
	dir := t.TempDir()
	for name, content := range map[string]string{
		"incidents-00000000000000000001.jsonl": "\x00\xff garbage\n{\"op\":\"begin\"}\n{\"op\":\"done\"}\n{\"op\":\"begin\",\"incident\":{\"id\":\"x\",\"source\":\"not an address\"}}\n[1,2,3]\n",
		"incidents-00000000000000000002.jsonl": strings.Repeat("x", maxRecordBytes+10) + "\n",
		"incidents-junk.jsonl":                 "not a segment, ignored",
		"README":                               "ignored",
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	j, unfinished := open(t, Config{Dir: dir})
	if len(unfinished) != 0 {
		t.Errorf("unfinished from garbage: %s", ids(unfinished))
	}
	if s := j.Stats(); s.Corrupt != 6 {
		t.Errorf("%d corrupt lines counted, want 6", s.Corrupt)
	}
	if err := j.Begin(incident(1)); err != nil {
		t.Fatal(err)
	}
}

// The journal's size stays bounded however many incidents go through it,
// and rotation keeps every unfinished one.
func TestRotationBounded(t *testing.T) {
	dir := t.TempDir()
	const maxBytes = 8 << 10
	j, _ := open(t, Config{Dir: dir, MaxBytes: maxBytes, Keep: 2})
	for i := range 1000 {
		if err := j.Begin(incident(i)); err != nil {
			t.Fatal(err)
		}
		if i%100 == 7 {
			continue // left unfinished
		}
		if err := j.Done(incident(i).ID, "cleaned up"); err != nil {
			t.Fatal(err)
		}
	}
	if s := j.Stats(); s.Rotations < 10 {
		t.Errorf("%d rotations for 1000 incidents in %d-byte segments", s.Rotations, maxBytes)
	}
	var total int64
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		info, _ := e.Info()
		total += info.Size()
	}
	// Each segment starts with the memory of finished ids (at most
	// rememberFinished done records) and rotates at twice its start.
	done, _ := json.Marshal(record{Op: opDone, At: time.Now(), ID: incident(999).ID})
	remembered := int64(min(1000, rememberFinished) * (len(done) + 1))
	if bound := 3 * max(maxBytes, 2*remembered); len(entries) > 2 || total > bound {
		t.Errorf("%d segments, %d bytes: not bounded by %d", len(entries), total, bound)
	}
	j.Close()
	_, unfinished := open(t, Config{Dir: dir, MaxBytes: maxBytes, Keep: 2})
	var want []string
	for i := 7; i < 1000; i += 100 {
		want = append(want, incident(i).ID)
	}
	if got := ids(unfinished); got != strings.Join(want, ",") {
		t.Errorf("unfinished after rotations: %s, want %s", got, strings.Join(want, ","))
	}
}

// A backlog larger than a segment does not make every write rotate.
func TestRotationWithLargeBacklog(t *testing.T) {
	j, _ := open(t, Config{Dir: t.TempDir(), MaxBytes: 1 << 10})
	for i := range 200 {
		if err := j.Begin(incident(i)); err != nil {
			t.Fatal(err)
		}
	}
	if s := j.Stats(); s.Rotations > 10 {
		t.Errorf("%d rotations for 200 begins: rotating on every write", s.Rotations)
	}
	if j.Unfinished() != 200 {
		t.Errorf("%d unfinished, want 200", j.Unfinished())
	}
}

func TestClosed(t *testing.T) {
	j, _ := open(t, Config{Dir: t.TempDir()})
	j.Close()
	if err := j.Begin(incident(1)); err == nil || !strings.Contains(err.Error(), "closed") {
		t.Errorf("Begin after Close: %v", err)
	}
}

func TestSegmentContent(t *testing.T) {
	j, _ := open(t, Config{Dir: t.TempDir()})
	if err := j.Begin(incident(1)); err != nil {
		t.Fatal(err)
	}
	if err := j.Done(incident(1).ID, "cleaned up: node deleted"); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(j.path(j.seq))
	if err != nil {
		t.Fatal(err)
	}
	lines := bytes.Split(bytes.TrimSpace(b), []byte("\n"))
	if len(lines) != 2 || !bytes.HasPrefix(lines[0], []byte(`{"op":"begin"`)) || !bytes.Contains(lines[1], []byte(`"outcome":"cleaned up: node deleted"`)) {
		t.Errorf("segment:\n%s", b)
	}
}

// An incident begun, done and begun again (assembled again from lines
// replayed after a restart: the same panic, the same id) is not taken on
// again, in this run or the next: nothing is left unfinished, and
// BeginAll does not hand it back to be acted on.
func TestFinishedRemembered(t *testing.T) {
	dir := t.TempDir()
	j, _ := open(t, Config{Dir: dir})
	for _, step := range []func() error{
		func() error { return j.Begin(incident(1)) },
		func() error { return j.Done(incident(1).ID, "cleaned up") },
		func() error { return j.Begin(incident(1)) },
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	if j.Unfinished() != 0 {
		t.Errorf("begun again after done: %d unfinished", j.Unfinished())
	}
	j.Close()
	j2, unfinished := open(t, Config{Dir: dir})
	if got := ids(unfinished); got != "" || j2.Stats().Resumed != 0 {
		t.Errorf("unfinished %q, resumed %d", got, j2.Stats().Resumed)
	}
	if !j2.Finished(incident(1).ID) {
		t.Error("the next run does not remember the incident finished")
	}
	if taken, err := j2.BeginAll([]detect.Incident{incident(1), incident(2), incident(2)}); err != nil || ids(taken) != "inc-002" {
		t.Errorf("BeginAll after a restart took %q (%v), want inc-002 alone", ids(taken), err)
	}
}

// A rotation that fails (here: the new segment's name is taken by a
// directory) fails that write, and the journal recovers once the cause
// is gone.
func TestRotationFailureRecovers(t *testing.T) {
	dir := t.TempDir()
	j, _ := open(t, Config{Dir: dir, MaxBytes: 1}) // every write rotates
	if err := j.Begin(incident(1)); err != nil {
		t.Fatal(err)
	}
	blocker := j.path(j.seq + 1)
	if err := os.Mkdir(blocker, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := j.Begin(incident(2)); err == nil {
		t.Fatal("Begin succeeded with the new segment's name taken")
	}
	os.Remove(blocker)
	if err := j.Begin(incident(3)); err != nil {
		t.Fatalf("after the cause is gone: %v", err)
	}
	if s := j.Stats(); s.WriteErrors != 1 {
		t.Errorf("%d write errors counted, want 1", s.WriteErrors)
	}
	j.Close()
	if _, unfinished := open(t, Config{Dir: dir}); ids(unfinished) != "inc-001,inc-003" {
		t.Errorf("unfinished %s", ids(unfinished))
	}
}

// A journal whose segment cannot be written at start (here its name is
// taken by a directory; in the field, a full disk) opens all the same,
// not writable and saying why, with the unfinished incidents read; once
// the cause is gone, Retry makes it writable.
func TestUnwritableAtStart(t *testing.T) {
	dir := t.TempDir()
	j, _ := open(t, Config{Dir: dir})
	if err := j.Begin(incident(1)); err != nil {
		t.Fatal(err)
	}
	j.Close()
	blocker := filepath.Join(dir, fmt.Sprintf("incidents-%020d.jsonl", 2))
	if err := os.Mkdir(blocker, 0o700); err != nil {
		t.Fatal(err)
	}
	j2, unfinished := open(t, Config{Dir: dir})
	if ids(unfinished) != "inc-001" {
		t.Errorf("unfinished %q", ids(unfinished))
	}
	if j2.Writable() == nil || j2.Retry() == nil {
		t.Fatal("a journal with no segment says it is writable")
	}
	if err := j2.Begin(incident(2)); err == nil {
		t.Error("Begin succeeded with no segment")
	}
	os.Remove(blocker)
	if err := j2.Retry(); err != nil {
		t.Fatalf("Retry: %v", err)
	}
	if err := j2.Begin(incident(2)); err != nil || j2.Unfinished() != 2 {
		t.Errorf("Begin after Retry: %v, %d unfinished", err, j2.Unfinished())
	}
}

// A collector that restarts again and again (an OOM kill loop) replays
// its spool each time: the incidents it finished must stay finished
// however many restarts (rotations) since, not only while the segment
// holding their done record is kept.
func TestFinishedRememberedAcrossRestarts(t *testing.T) {
	dir := t.TempDir()
	j, _ := open(t, Config{Dir: dir})
	if err := j.Begin(incident(1)); err != nil {
		t.Fatal(err)
	}
	if err := j.Done(incident(1).ID, "cleaned up"); err != nil {
		t.Fatal(err)
	}
	j.Close()
	for restart := range 4 {
		j, _ := open(t, Config{Dir: dir})
		if !j.Finished(incident(1).ID) {
			t.Fatalf("restart %d: the finished incident is forgotten", restart+1)
		}
		j.Close()
	}
	j, _ = open(t, Config{Dir: dir})
	if taken, err := j.BeginAll([]detect.Incident{incident(1)}); err != nil || len(taken) != 0 {
		t.Errorf("after 5 restarts BeginAll took %q (%v): a finished incident would be acted on again", ids(taken), err)
	}
}

// A batch that cannot be written (a full disk) still says which of its
// incidents are new: the caller acts on those without the journal, and
// not on one finished lately or resumed, which a spool replay after a
// restart assembles again.
func TestBeginAllUnwritableLeavesOutKnown(t *testing.T) {
	dir := t.TempDir()
	j, _ := open(t, Config{Dir: dir})
	for _, step := range []func() error{
		func() error { return j.Begin(incident(1)) },
		func() error { return j.Done(incident(1).ID, "cleaned up") },
		func() error { return j.Begin(incident(2)) }, // left unfinished
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	j.Close()
	blocker := filepath.Join(dir, fmt.Sprintf("incidents-%020d.jsonl", 2))
	if err := os.Mkdir(blocker, 0o700); err != nil {
		t.Fatal(err)
	}
	j2, _ := open(t, Config{Dir: dir})
	taken, err := j2.BeginAll([]detect.Incident{incident(1), incident(2), incident(3)})
	if err == nil {
		t.Fatal("BeginAll succeeded with no segment")
	}
	if ids(taken) != "inc-003" {
		t.Errorf("unwritable BeginAll returned %q to act on, want inc-003 alone (inc-001 finished, inc-002 resumed)", ids(taken))
	}
}

// An incident acted on while the journal could not be written is
// remembered finished once done: when the journal is writable again, the
// same incident assembled again from the spool is not acted on twice.
func TestDoneWhileUnwritableRemembered(t *testing.T) {
	dir := t.TempDir()
	blocker := filepath.Join(dir, fmt.Sprintf("incidents-%020d.jsonl", 1))
	if err := os.Mkdir(blocker, 0o700); err != nil {
		t.Fatal(err)
	}
	j, _ := open(t, Config{Dir: dir})
	if taken, err := j.BeginAll([]detect.Incident{incident(1)}); err == nil || ids(taken) != "inc-001" {
		t.Fatalf("unwritable BeginAll: %q, %v", ids(taken), err)
	}
	if err := j.Done(incident(1).ID, "report-only"); err != nil {
		t.Fatal(err)
	}
	os.Remove(blocker)
	if err := j.Retry(); err != nil {
		t.Fatal(err)
	}
	if taken, err := j.BeginAll([]detect.Incident{incident(1)}); err != nil || len(taken) != 0 {
		t.Errorf("BeginAll after Retry took %q (%v): the incident done without the journal is acted on again", ids(taken), err)
	}
	j.Close()
	if j2, _ := open(t, Config{Dir: dir}); !j2.Finished(incident(1).ID) {
		t.Error("the next run does not remember it finished")
	}
}
