// Package ringbuf reads the XDP program's ring buffer and turns each record
// (struct record in bpf/lastgasp.h) into a filter.Line.
//
// A match wakes a sleeping reader, but context lines are written without a
// wakeup (a wakeup costs microseconds in the kernel's receive path) until
// a burst ends or the ring fills; the reader therefore also polls, every
// PollInterval, and so sees every record within that time.
package ringbuf

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	cilium "github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"

	"github.com/lastgasp/lastgasp/bpf"
	"github.com/lastgasp/lastgasp/internal/filter"
)

// PollInterval is how often the reader looks for records written without
// a wakeup. It bounds how late a context line can be read.
const PollInterval = 100 * time.Millisecond

// ErrClosed is returned by Read once the reader is closed.
var ErrClosed = cilium.ErrClosed

// headLen is the size of a record's fields before its payload: a sample
// is these and then the record's len bytes of payload, no more (the
// program sizes each record to its line).
const headLen = int(unsafe.Offsetof(bpf.LastgaspRecord{}.Payload))

// Reader reads forwarded lines from the ring buffer. Read is not safe for
// concurrent use; Close may be called from any goroutine to stop it.
type Reader struct {
	rd    *cilium.Reader
	rec   cilium.Record
	clock Clock
	bad   atomic.Uint64
}

// NewReader opens the ring buffer map events (loader.Program.Events).
func NewReader(events *ebpf.Map) (*Reader, error) {
	rd, err := cilium.NewReader(events)
	if err != nil {
		return nil, fmt.Errorf("open ring buffer: %w", err)
	}
	return &Reader{rd: rd}, nil
}

// Read returns the next line, waiting for one until ctx is done (ctx.Err())
// or the reader is closed (ErrClosed). Records that cannot be decoded are
// counted (Malformed) and skipped. The Line is the caller's to keep.
func (r *Reader) Read(ctx context.Context) (filter.Line, error) {
	// Cancelling ctx flushes the reader, which then returns what it
	// holds and ErrFlushed: Read notices at once, not at the next poll.
	stop := context.AfterFunc(ctx, func() { r.rd.Flush() })
	defer stop()
	for {
		if err := ctx.Err(); err != nil {
			return filter.Line{}, err
		}
		r.rd.SetDeadline(time.Now().Add(PollInterval))
		err := r.rd.ReadInto(&r.rec)
		if errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, cilium.ErrFlushed) {
			continue
		}
		if err != nil {
			return filter.Line{}, fmt.Errorf("read ring buffer: %w", err)
		}
		line, err := Decode(r.rec.RawSample, r.clock.Stamp)
		if err != nil {
			r.bad.Add(1)
			continue
		}
		line.Payload = bytes.Clone(line.Payload)
		return line, nil
	}
}

// ReadWaiting calls fn for every line already in the ring buffer, without
// waiting for more, and returns how many it read. Lines are stamped by
// stamp (see Decode); each is fn's to keep.
func (r *Reader) ReadWaiting(stamp func(monoNS uint64) time.Time, fn func(filter.Line)) (int, error) {
	n := 0
	for r.rd.AvailableBytes() > 0 {
		r.rd.SetDeadline(time.Now())
		err := r.rd.ReadInto(&r.rec)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			break
		}
		if err != nil {
			return n, fmt.Errorf("read ring buffer: %w", err)
		}
		line, err := Decode(r.rec.RawSample, stamp)
		if err != nil {
			r.bad.Add(1)
			continue
		}
		line.Payload = bytes.Clone(line.Payload)
		fn(line)
		n++
	}
	return n, nil
}

// Malformed returns how many records could not be decoded.
func (r *Reader) Malformed() uint64 { return r.bad.Load() }

// Close stops the reader; a blocked Read returns ErrClosed.
func (r *Reader) Close() error {
	if err := r.rd.Close(); err != nil {
		return fmt.Errorf("close ring buffer reader: %w", err)
	}
	return nil
}

// Decode turns one raw record into a Line; the Line's Payload aliases raw,
// so it is valid only as long as raw is. stamp converts the record's
// CLOCK_MONOTONIC receive time (the coarse clock: as of the kernel's last
// tick, up to a jiffy behind) to wall time (Clock.Stamp does it for a
// live reader; an offline scan substitutes the capture's own time).
func Decode(raw []byte, stamp func(monoNS uint64) time.Time) (filter.Line, error) {
	if len(raw) < headLen {
		return filter.Line{}, fmt.Errorf("decode record: %d bytes, shorter than its %d-byte head", len(raw), headLen)
	}
	// The head only: raw is shorter than a whole struct record.
	var rec bpf.LastgaspRecord
	copy(unsafe.Slice((*byte)(unsafe.Pointer(&rec)), headLen), raw)
	if rec.Version != uint8(bpf.LastgaspLimitsCONTRACT_VERSION) {
		return filter.Line{}, fmt.Errorf("decode record: version %d, want %d", rec.Version, bpf.LastgaspLimitsCONTRACT_VERSION)
	}
	if int(rec.Len) > len(rec.Payload) || rec.Len > rec.WireLen || len(raw) != headLen+int(rec.Len) {
		return filter.Line{}, fmt.Errorf("decode record: %d bytes, payload length %d of %d on the wire", len(raw), rec.Len, rec.WireLen)
	}
	flags := bpf.LastgaspRecordFlags(rec.Flags)
	var flag filter.Flag
	switch {
	case flags&bpf.LastgaspRecordFlagsRECORD_MATCH != 0 && rec.PatternId != 0:
		flag = filter.Match
	case flags&bpf.LastgaspRecordFlagsRECORD_CONTEXT != 0 && rec.PatternId == 0:
		flag = filter.Context
	default:
		return filter.Line{}, fmt.Errorf("decode record: flags %#x with pattern %d", rec.Flags, rec.PatternId)
	}
	addr := netip.AddrFrom16(rec.Saddr).Unmap()
	return filter.Line{
		Source:    netip.AddrPortFrom(addr, rec.Sport),
		Time:      stamp(rec.TimeNs),
		Flag:      flag,
		PatternID: uint32(rec.PatternId),
		Truncated: flags&bpf.LastgaspRecordFlagsRECORD_TRUNCATED != 0,
		Payload:   raw[headLen:],
	}, nil
}

// Clock converts the program's receive times (bpf_ktime_get_ns, that is
// CLOCK_MONOTONIC) to wall time, by the offset between the two clocks. It
// measures the offset at most once a second, since a clock_gettime system
// call costs far more than decoding a record: a step of the wall clock
// shows within a second. The zero value is ready; it is not safe for
// concurrent use.
type Clock struct {
	offset int64     // wall minus monotonic, in nanoseconds
	next   time.Time // when to measure it again
}

// Stamp returns the wall time of a CLOCK_MONOTONIC time in nanoseconds.
func (c *Clock) Stamp(monoNS uint64) time.Time {
	if now := time.Now(); !now.Before(c.next) {
		var ts unix.Timespec
		if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err == nil {
			c.offset = now.UnixNano() - ts.Nano()
		}
		c.next = now.Add(time.Second)
	}
	return time.Unix(0, int64(monoNS)+c.offset)
}

// Run reads lines and calls emit with each until ctx is done (it then
// returns nil) or reading fails. A line read is always emitted, even if
// ctx is done by then: it is gone from the ring buffer.
func (r *Reader) Run(ctx context.Context, emit func(filter.Line)) error {
	for {
		line, err := r.Read(ctx)
		if err == nil {
			emit(line)
			continue
		}
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
}
