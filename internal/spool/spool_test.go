package spool

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/lastgasp/lastgasp/internal/filter"
)

func line(i int) filter.Line {
	src := netip.MustParseAddrPort("10.0.0.7:6666")
	if i%2 == 1 {
		src = netip.MustParseAddrPort("[fd00::7]:6665")
	}
	return filter.Line{
		Source:    src,
		Time:      time.Unix(1_700_000_000, int64(i)*1000).UTC(),
		Flag:      filter.Flag(1 + i%2),
		PatternID: uint32(i),
		Truncated: i%3 == 0,
		Payload:   fmt.Appendf(nil, "[ %d.000000] Kernel panic - not syncing: line %d", i, i),
	}
}

func open(t *testing.T, cfg Config) (*Spool, []filter.Line) {
	t.Helper()
	s, lines, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, lines
}

func same(t *testing.T, got []filter.Line, want []filter.Line) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%d lines replayed, want %d", len(got), len(want))
	}
	for i := range want {
		g, w := got[i], want[i]
		g.Time, w.Time = g.Time.UTC(), w.Time.UTC()
		if !reflect.DeepEqual(g, w) {
			t.Errorf("line %d: got %+v, want %+v", i, g, w)
		}
	}
}

// Every line written is replayed by the next Open, as it was written, in
// order and across segments; the next run numbers its lines after them.
func TestReplay(t *testing.T) {
	dir := t.TempDir()
	s, lines := open(t, Config{Dir: dir, SegmentBytes: 200})
	if len(lines) != 0 {
		t.Fatalf("a new spool replays %d lines", len(lines))
	}
	var want []filter.Line
	for i := range 20 {
		want = append(want, line(i))
		if seq, err := s.Write(line(i)); err != nil || seq != uint64(i+1) {
			t.Fatalf("Write %d: seq %d, %v", i, seq, err)
		}
	}
	// No Close: a kill leaves the files as they are.
	s2, got := open(t, Config{Dir: dir})
	same(t, got, want)
	if seq, _ := s2.Write(line(20)); seq != 21 {
		t.Errorf("the first line after 20 replayed is seq %d, want 21", seq)
	}
	if st := s2.Stats(); st.Replayed != 20 || st.Torn != 0 {
		t.Errorf("stats %+v", st)
	}
}

// A frame torn by a kill mid-write ends its segment's replay there,
// counted; the lines before it, and later segments, are replayed.
func TestTornFrame(t *testing.T) {
	dir := t.TempDir()
	s, _ := open(t, Config{Dir: dir})
	for i := range 3 {
		s.Write(line(i))
	}
	s.Close()
	seg := filepath.Join(dir, fmt.Sprintf("spool-%020d.bin", 0))
	st, err := os.Stat(seg)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(seg, st.Size()-5); err != nil {
		t.Fatal(err)
	}
	s2, got := open(t, Config{Dir: dir})
	same(t, got, []filter.Line{line(0), line(1)})
	s2.Write(line(3))
	s2.Close()
	// A flipped byte fails the checksum the same way.
	b, _ := os.ReadFile(seg)
	b[20] ^= 0xff
	os.WriteFile(seg, b, 0o600)
	s3, got := open(t, Config{Dir: dir})
	same(t, got, []filter.Line{line(3)})
	if st := s3.Stats(); st.Torn != 1 {
		t.Errorf("torn %d, want 1", st.Torn)
	}
}

// Trim removes closed segments while the caller says they are safe, and
// stops at the first that is not; what stays is replayed.
func TestTrim(t *testing.T) {
	dir := t.TempDir()
	// A segment a line; lines 1 µs apart are not one incident.
	s, _ := open(t, Config{Dir: dir, SegmentBytes: 1, JoinGap: time.Nanosecond})
	for i := range 5 {
		s.Write(line(i))
	}
	var asked []uint64
	s.Trim(func(seg Segment) bool {
		asked = append(asked, seg.LastSeq)
		return seg.LastSeq <= 2
	})
	if !reflect.DeepEqual(asked, []uint64{1, 2, 3}) {
		t.Errorf("Trim asked about %v, want [1 2 3]", asked)
	}
	_, got := open(t, Config{Dir: dir})
	same(t, got, []filter.Line{line(2), line(3), line(4)})
}

// A source's lines that go on from one segment into a later one (here
// with another source's segment between) are one incident as far as the
// spool can tell: the earlier segments are kept, safe or not, until the
// later one is safe too, or a replay would assemble the incident from its
// tail alone, under another id (its first trigger lost), and a finished
// incident would be acted on again. A source whose lines do not go on
// (here the last, 3 min later) does not hold its segment.
func TestTrimKeepsAnIncidentWhole(t *testing.T) {
	dir := t.TempDir()
	s, _ := open(t, Config{Dir: dir, SegmentBytes: 1}) // a segment a line
	t0 := time.Unix(1_700_000_000, 0)
	at := func(src string, d time.Duration) filter.Line {
		return filter.Line{Source: netip.MustParseAddrPort(src), Time: t0.Add(d), Payload: []byte(src)}
	}
	a1, b, a2, c := at("10.0.0.7:6665", 0), at("10.0.0.8:6665", time.Second), at("10.0.0.7:6665", 2*time.Second), at("10.0.0.9:6665", 3*time.Minute)
	for _, l := range []filter.Line{a1, b, a2, c} {
		s.Write(l)
	}
	s.Trim(func(seg Segment) bool { return seg.LastSeq <= 2 })
	_, got := open(t, Config{Dir: dir})
	same(t, got, []filter.Line{a1, b, a2, c})

	s2, _ := open(t, Config{Dir: dir})
	s2.Trim(func(seg Segment) bool { return seg.LastSeq <= 3 })
	_, got = open(t, Config{Dir: dir})
	same(t, got, []filter.Line{c})
}

// Past MaxBytes the oldest segments go, counted: a flood cannot fill the
// disk.
func TestBounded(t *testing.T) {
	dir := t.TempDir()
	s, _ := open(t, Config{Dir: dir, SegmentBytes: 1000, MaxBytes: 10_000})
	for i := range 1000 {
		s.Write(line(i))
	}
	var total int64
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		info, _ := e.Info()
		total += info.Size()
	}
	st := s.Stats()
	if total > 10_000 || st.Evicted == 0 || st.Written != 1000 {
		t.Errorf("%d bytes on disk, stats %+v", total, st)
	}
	_, got := open(t, Config{Dir: dir})
	if n := uint64(len(got)); n+st.Evicted != 1000 || !reflect.DeepEqual(got[len(got)-1].Payload, line(999).Payload) {
		t.Errorf("replayed %d + evicted %d, want 1000 with the newest kept", n, st.Evicted)
	}
}

// Damage in the length field (a huge length) is a torn frame, not a huge
// allocation.
func TestHostileLength(t *testing.T) {
	for _, b := range [][]byte{
		{0xff, 0xff, 0xff, 0x7f, 0, 0, 0, 0},
		{1, 0, 0, 0},
		{4, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4},
	} {
		if _, _, err := decode(b); err == nil {
			t.Errorf("decode(%x) accepted", b)
		}
	}
}

// A flood from more addresses than the spool remembers holds segments
// (each line may go on later) but costs no scan of what it remembers a
// line: 100 000 lines from new addresses stay cheap.
func BenchmarkWriteManySources(b *testing.B) {
	s, _, err := Open(Config{Dir: b.TempDir(), MaxBytes: 4 << 20})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	t0 := time.Now()
	b.ResetTimer()
	for i := range b.N {
		a := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		s.Write(filter.Line{Source: netip.AddrPortFrom(a, 6665), Time: t0.Add(time.Duration(i) * time.Microsecond), Payload: []byte("x")})
	}
}

// A source that prints a line every 30 s (a repeated warning) makes no
// incident of them (the detector's quiet period is 5 s): it does not hold
// its segments, or it would stop the spool from ever being trimmed.
func TestTrimChattySource(t *testing.T) {
	dir := t.TempDir()
	s, _ := open(t, Config{Dir: dir, SegmentBytes: 1}) // a segment a line
	t0 := time.Unix(1_700_000_000, 0)
	var lines []filter.Line
	for i := range 4 {
		l := filter.Line{Source: netip.MustParseAddrPort("10.0.0.7:6665"), Time: t0.Add(time.Duration(i) * 30 * time.Second), Payload: fmt.Appendf(nil, "warning %d", i)}
		lines = append(lines, l)
		s.Write(l)
	}
	s.Trim(func(seg Segment) bool { return seg.LastSeq <= 2 })
	_, got := open(t, Config{Dir: dir})
	same(t, got, lines[2:])
}
