// Package spool keeps the lines a data path forwarded on disk from the
// moment they are read until the incidents they make are safe in the
// journal, so that a collector killed at any instant (SIGKILL, an OOM
// kill) loses no panic: a dead kernel never sends its panic again, and
// the next start replays the spooled lines into the assembler.
//
// Forwarded lines are few (pattern matches and their context bursts), so
// each is written with one write(2) as it is read: it then outlives the
// process, though not a power failure of the collector's host (the
// journal's fsync covers incidents once assembled).
//
// The spool is a directory of segments, spool-<sequence>.bin, written one
// after the other; the current one is closed past Config.SegmentBytes or
// Config.SegmentAge. A closed segment is removed once its lines are
// assembled and their incidents journaled (Trim asks the caller), and
// the oldest are evicted, counted, past Config.MaxBytes, so the spool is
// bounded whatever a flood sends. A segment whose source's lines go on
// in a later one (within Config.JoinGap) is removed only with that later
// one: a replay never starts an incident half-way, which would give it
// another id and have a finished incident acted on again.
//
// A record is a frame, little-endian:
//
//	u32 length of what follows the checksum
//	u32 CRC-32C of what follows the checksum
//	i64 receive time, Unix nanoseconds
//	u8  flag (filter.Flag)
//	u8  1 if the datagram was truncated
//	u32 pattern id
//	u16 source port
//	u8  source address length (4 or 16), then the address
//	    the payload, to the end of the frame
//
// A frame torn by a kill mid-write, or damaged, fails its length or
// checksum: it and the rest of its segment are skipped, and counted.
package spool

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net/netip"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/lastgasp/lastgasp/internal/filter"
	"github.com/lastgasp/lastgasp/internal/segment"
)

// Config configures a spool.
type Config struct {
	// Dir is the spool's directory; it is created if missing.
	Dir string
	// SegmentBytes closes the current segment past this size. Default
	// 1 MiB.
	SegmentBytes int64
	// SegmentAge closes the current segment this long after its first
	// line. Default 5 s.
	SegmentAge time.Duration
	// MaxBytes bounds all segments together: past it the oldest closed
	// segment is evicted, its lines counted as lost to the spool (they
	// are still assembled; only a crash would lose them). Default 64 MiB.
	MaxBytes int64
	// JoinGap is how far apart, by receive time, two lines of a source
	// may be and still belong to one incident: a segment is trimmed only
	// with the later segments its sources' lines go on in within it.
	// Default 10 s: twice the detector's quiet period (5 s, by the
	// kernel's clock, which a line's receive time follows but for
	// network delay). Not longer: a source that prints a line every
	// JoinGap would hold every segment from then on.
	JoinGap time.Duration
}

// Defaults.
const (
	DefaultSegmentBytes = 1 << 20
	DefaultSegmentAge   = 5 * time.Second
	DefaultMaxBytes     = 64 << 20
	DefaultJoinGap      = 10 * time.Second
)

// maxJoinSources bounds the sources whose last line the spool remembers
// for JoinGap; past it (a flood from many addresses) every segment with a
// line within JoinGap is held for the next, as if joined.
const maxJoinSources = 16384

// Stats count what the spool did.
type Stats struct {
	// Written counts lines written.
	Written uint64
	// Replayed counts lines read back by Open.
	Replayed uint64
	// Torn counts segments whose end was unreadable (a frame torn by a
	// kill, or damage): what follows it in that segment is skipped.
	Torn uint64
	// Removed counts segments removed by Trim: their lines were safe.
	Removed uint64
	// Evicted counts lines in segments removed past MaxBytes before they
	// were safe.
	Evicted uint64
	// WriteErrors counts lines that could not be written.
	WriteErrors uint64
}

// Segment is what Trim tells its caller of a closed segment.
type Segment struct {
	// LastSeq is the sequence number (Write's return) of its last line.
	LastSeq uint64
	// LastWrite is when its last line was written.
	LastWrite time.Time
}

// Spool is an open spool. Its methods are safe for concurrent use.
type Spool struct {
	cfg Config

	mu     sync.Mutex
	f      *os.File // the current segment, nil until the first line
	cur    segmentState
	closed []segmentState // oldest first
	next   uint64         // the next segment's sequence number
	seq    uint64         // lines written, this run
	// lastSeen is each source's latest line: its receive time and the
	// segment it is in, for JoinGap.
	lastSeen map[netip.Addr]seen
	pruned   time.Time // when lastSeen was last pruned, by receive time
	stats    Stats
}

// seen is where and when a source's latest line is.
type seen struct {
	at  time.Time
	seg uint64
}

// segmentState is one file's bookkeeping.
type segmentState struct {
	seq       uint64 // its sequence number (file name)
	size      int64
	lines     uint64
	opened    time.Time
	lastSeq   uint64
	lastWrite time.Time
	lastLine  time.Time // receive time of its latest line
	// joinsNext: a source's lines go on in a later segment within
	// JoinGap: this one is trimmed only with the next.
	joinsNext bool
}

const (
	prefix = "spool-"
	suffix = ".bin"
	// frameHeader is the length and checksum before each record.
	frameHeader = 8
	// maxRecord bounds one record read back: a line is at most
	// filter.MaxPayload bytes, plus its fixed fields.
	maxRecord = 64 << 10
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Open reads the spool in cfg.Dir and returns it, with every line its
// segments hold, oldest first, to be replayed into the assembler. The
// segments stay until Trim finds them safe: a start that is killed too
// replays them again.
func Open(cfg Config) (*Spool, []filter.Line, error) {
	if cfg.SegmentBytes <= 0 {
		cfg.SegmentBytes = DefaultSegmentBytes
	}
	if cfg.SegmentAge <= 0 {
		cfg.SegmentAge = DefaultSegmentAge
	}
	if cfg.MaxBytes <= 0 {
		cfg.MaxBytes = DefaultMaxBytes
	}
	if cfg.JoinGap <= 0 {
		cfg.JoinGap = DefaultJoinGap
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("spool: %w", err)
	}
	s := &Spool{cfg: cfg, lastSeen: map[netip.Addr]seen{}}
	seqs, err := s.segments()
	if err != nil {
		return nil, nil, err
	}
	var lines []filter.Line
	now := time.Now()
	for _, seq := range seqs {
		got, size, err := s.read(seq)
		if err != nil {
			return nil, nil, err
		}
		lines = append(lines, got...)
		// Replayed lines are numbered first: the caller assembles them
		// before any line written now, and counts them the same way.
		s.seq += uint64(len(got))
		s.closed = append(s.closed, segmentState{seq: seq, size: size, lines: uint64(len(got)), lastSeq: s.seq, lastWrite: now})
		for _, l := range got {
			s.join(l, seq)
		}
		s.next = seq + 1
	}
	s.stats.Replayed = uint64(len(lines))
	return s, lines, nil
}

// segments lists the sequence numbers of the segments in the directory,
// in order.
func (s *Spool) segments() ([]uint64, error) {
	seqs, err := s.files().List()
	if err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	return seqs, nil
}

// files are the directory's segments.
func (s *Spool) files() segment.Files {
	return segment.Files{Dir: s.cfg.Dir, Prefix: prefix, Suffix: suffix}
}

func (s *Spool) path(seq uint64) string { return s.files().Path(seq) }

// read returns a segment's lines up to its first unreadable frame, and
// its size.
func (s *Spool) read(seq uint64) ([]filter.Line, int64, error) {
	b, err := os.ReadFile(s.path(seq))
	if err != nil {
		return nil, 0, fmt.Errorf("spool: %w", err)
	}
	var lines []filter.Line
	for rest := b; len(rest) > 0; {
		l, n, err := decode(rest)
		if err != nil {
			s.stats.Torn++
			break
		}
		lines = append(lines, l)
		rest = rest[n:]
	}
	return lines, int64(len(b)), nil
}

// Write appends a line to the spool and returns its sequence number in
// this run: the lines Open returned are 1 to N, the first line written
// N+1, and so on. Trim's caller compares a segment's LastSeq with how many
// lines it has assembled, replayed ones first. A line that cannot be written is counted and
// the error returned; the caller forwards the line all the same.
func (s *Spool) Write(l filter.Line) (uint64, error) {
	frame := encode(l)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seq++
	now := time.Now()
	if s.f != nil && (s.cur.size >= s.cfg.SegmentBytes || now.Sub(s.cur.opened) >= s.cfg.SegmentAge) {
		s.closeCurrent()
	}
	if s.f == nil {
		if err := s.openCurrent(now); err != nil {
			s.stats.WriteErrors++
			return s.seq, err
		}
	}
	n, err := s.f.Write(frame)
	s.cur.size += int64(n)
	if err != nil {
		// A torn frame ends what a replay reads of this segment: start
		// the next line in a new one.
		s.stats.WriteErrors++
		s.closeCurrent()
		return s.seq, fmt.Errorf("spool: write: %w", err)
	}
	s.join(l, s.cur.seq)
	s.cur.lines++
	s.cur.lastSeq, s.cur.lastWrite = s.seq, now
	s.stats.Written++
	s.evict()
	return s.seq, nil
}

// join notes line l, in segment seg, for JoinGap: the closed segments
// since its source's previous line, if that was within JoinGap, are
// marked joined to the next. The segment's own bookkeeping (closed, or
// the current one) is updated too.
func (s *Spool) join(l filter.Line, seg uint64) {
	st := s.state(seg)
	if st != nil && l.Time.After(st.lastLine) {
		st.lastLine = l.Time
	}
	addr := l.Source.Addr().Unmap()
	prev, known := s.lastSeen[addr]
	if !known && len(s.lastSeen) >= maxJoinSources {
		// Forget the sources silent for JoinGap, at most once a second
		// of lines: a flood from new addresses costs no scan a line.
		if l.Time.Sub(s.pruned) >= time.Second || l.Time.Before(s.pruned) {
			s.pruned = l.Time
			for a, p := range s.lastSeen {
				if l.Time.Sub(p.at) >= s.cfg.JoinGap {
					delete(s.lastSeen, a)
				}
			}
		}
		if len(s.lastSeen) >= maxJoinSources {
			// Too many sources to tell: hold every segment with a line
			// within JoinGap for the next.
			for i := range s.closed {
				if l.Time.Sub(s.closed[i].lastLine) < s.cfg.JoinGap {
					s.closed[i].joinsNext = true
				}
			}
			return
		}
	}
	if known && prev.seg < seg && l.Time.Sub(prev.at) < s.cfg.JoinGap {
		for i := range s.closed {
			if s.closed[i].seq >= prev.seg && s.closed[i].seq < seg {
				s.closed[i].joinsNext = true
			}
		}
	}
	s.lastSeen[addr] = seen{at: l.Time, seg: seg}
}

// state returns the bookkeeping of segment seq, if it is still held.
func (s *Spool) state(seq uint64) *segmentState {
	if s.f != nil && s.cur.seq == seq {
		return &s.cur
	}
	for i := range s.closed {
		if s.closed[i].seq == seq {
			return &s.closed[i]
		}
	}
	return nil
}

// openCurrent starts a new segment.
func (s *Spool) openCurrent(now time.Time) error {
	seq := s.next
	f, err := os.OpenFile(s.path(seq), os.O_WRONLY|os.O_CREATE|os.O_TRUNC|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("spool: new segment: %w", err)
	}
	s.next++
	s.f, s.cur = f, segmentState{seq: seq, opened: now}
	return nil
}

// closeCurrent closes the current segment; it waits for Trim.
func (s *Spool) closeCurrent() {
	if s.f == nil {
		return
	}
	s.f.Close()
	s.f = nil
	if s.cur.lines == 0 {
		os.Remove(s.path(s.cur.seq))
		return
	}
	s.closed = append(s.closed, s.cur)
}

// evict removes the oldest closed segments while the spool is over
// MaxBytes.
func (s *Spool) evict() {
	total := s.cur.size
	for _, seg := range s.closed {
		total += seg.size
	}
	for total > s.cfg.MaxBytes && len(s.closed) > 0 {
		seg := s.closed[0]
		s.closed = s.closed[1:]
		os.Remove(s.path(seg.seq))
		s.stats.Evicted += seg.lines
		total -= seg.size
	}
}

// Trim removes closed segments, oldest first, while safe says their lines
// are safe (assembled, and their incidents journaled); it stops at the
// first that is not, and keeps too the safe ones whose sources' lines go
// on in it (see JoinGap). The current segment is closed first if it has
// been open for SegmentAge, so a quiet spool empties.
func (s *Spool) Trim(safe func(Segment) bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.f != nil && time.Since(s.cur.opened) >= s.cfg.SegmentAge {
		s.closeCurrent()
	}
	n := 0
	for n < len(s.closed) && safe(Segment{LastSeq: s.closed[n].lastSeq, LastWrite: s.closed[n].lastWrite}) {
		n++
	}
	for n > 0 && s.closed[n-1].joinsNext && (n < len(s.closed) || s.f != nil) {
		n--
	}
	for _, seg := range s.closed[:n] {
		os.Remove(s.path(seg.seq))
		s.stats.Removed++
	}
	s.closed = s.closed[n:]
}

// Stats returns what the spool has done.
func (s *Spool) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stats
}

// Close closes the current segment; what the spool holds stays for the
// next Open.
func (s *Spool) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.f == nil {
		return nil
	}
	err := s.f.Close()
	s.f = nil
	return err
}

// encode frames a line as the package comment lays out.
func encode(l filter.Line) []byte {
	addr := l.Source.Addr().Unmap()
	ab := addr.AsSlice()
	body := make([]byte, 0, 17+len(ab)+len(l.Payload))
	body = binary.LittleEndian.AppendUint64(body, uint64(l.Time.UnixNano()))
	body = append(body, byte(l.Flag))
	if l.Truncated {
		body = append(body, 1)
	} else {
		body = append(body, 0)
	}
	body = binary.LittleEndian.AppendUint32(body, l.PatternID)
	body = binary.LittleEndian.AppendUint16(body, l.Source.Port())
	body = append(body, byte(len(ab)))
	body = append(body, ab...)
	body = append(body, l.Payload...)
	frame := make([]byte, 0, frameHeader+len(body))
	frame = binary.LittleEndian.AppendUint32(frame, uint32(len(body)))
	frame = binary.LittleEndian.AppendUint32(frame, crc32.Checksum(body, castagnoli))
	return append(frame, body...)
}

// errFrame is a frame that is torn or damaged.
var errFrame = errors.New("spool: torn or damaged frame")

// decode reads the frame at the start of b and returns its line and the
// frame's length.
func decode(b []byte) (filter.Line, int, error) {
	if len(b) < frameHeader {
		return filter.Line{}, 0, io.ErrUnexpectedEOF
	}
	n := int(binary.LittleEndian.Uint32(b))
	if n > maxRecord || len(b)-frameHeader < n {
		return filter.Line{}, 0, errFrame
	}
	body := b[frameHeader : frameHeader+n]
	if crc32.Checksum(body, castagnoli) != binary.LittleEndian.Uint32(b[4:]) || len(body) < 17 {
		return filter.Line{}, 0, errFrame
	}
	var l filter.Line
	l.Time = time.Unix(0, int64(binary.LittleEndian.Uint64(body)))
	l.Flag = filter.Flag(body[8])
	l.Truncated = body[9] == 1
	l.PatternID = binary.LittleEndian.Uint32(body[10:])
	port := binary.LittleEndian.Uint16(body[14:])
	alen := int(body[16])
	if (alen != 4 && alen != 16) || len(body) < 17+alen {
		return filter.Line{}, 0, errFrame
	}
	addr, _ := netip.AddrFromSlice(body[17 : 17+alen])
	l.Source = netip.AddrPortFrom(addr, port)
	l.Payload = slices.Clone(body[17+alen:])
	return l, frameHeader + n, nil
}
