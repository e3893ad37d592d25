package ringbuf_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"testing"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"

	"github.com/lastgasp/lastgasp/bpf"
	"github.com/lastgasp/lastgasp/internal/filter"
	"github.com/lastgasp/lastgasp/internal/testrig/packettest"
	"github.com/lastgasp/lastgasp/loader"
	"github.com/lastgasp/lastgasp/ringbuf"
)

// load loads the program with a 64 KiB ring buffer and opens a reader
// on it; both are closed when the test ends.
func load(t *testing.T) (*loader.Program, *ringbuf.Reader) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("loading BPF programs needs root")
	}
	prog, err := loader.Load(loader.Config{NoContext: true, RingBufSize: 1 << 16})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { prog.Close() })
	rd, err := ringbuf.NewReader(prog.Events())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rd.Close() })
	return prog, rd
}

func TestReadKeepsLinesAndStopsOnCancel(t *testing.T) {
	prog, rd := load(t)

	for _, text := range []string{"Kernel panic - not syncing: AAAA", "Kernel panic - not syncing: BBBB"} {
		if _, err := prog.XDP().Run(&ebpf.RunOptions{Data: packettest.Line(text).Frame()}); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	first, err := rd.Read(ctx)
	if err != nil {
		t.Fatal(err)
	}
	second, err := rd.Read(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if string(first.Payload) != "Kernel panic - not syncing: AAAA" || string(second.Payload) != "Kernel panic - not syncing: BBBB" {
		t.Errorf("payloads %q, %q: the first must survive the second read", first.Payload, second.Payload)
	}
	if first.Flag != filter.Match || first.Source.String() != "10.99.0.2:6665" {
		t.Errorf("first line %+v", first)
	}
	if age := time.Since(first.Time); age < 0 || age > time.Minute {
		t.Errorf("receive time %v is %v from now", first.Time, age)
	}

	// Nothing left: a cancelled read returns at once, not at the next poll.
	cctx, ccancel := context.WithCancel(context.Background())
	go func() { time.Sleep(20 * time.Millisecond); ccancel() }()
	start := time.Now()
	if _, err := rd.Read(cctx); !errors.Is(err, context.Canceled) {
		t.Errorf("read after cancel: %v", err)
	}
	if waited := time.Since(start); waited > ringbuf.PollInterval/2+20*time.Millisecond {
		t.Errorf("read returned %v after cancel", waited)
	}
	rd.Close()
	if _, err := rd.Read(context.Background()); !errors.Is(err, ringbuf.ErrClosed) {
		t.Errorf("read after close: %v, want ErrClosed", err)
	}
}

func TestDecodeRejectsBadRecords(t *testing.T) {
	head := int(unsafe.Offsetof(bpf.LastgaspRecord{}.Payload))
	// record is a record of 5 payload bytes (the program sends a record's
	// head and its payload, no more), edited by edit.
	record := func(edit func(*bpf.LastgaspRecord)) []byte {
		var rec bpf.LastgaspRecord
		rec.Len, rec.WireLen = 5, 5
		rec.Flags = uint8(bpf.LastgaspRecordFlagsRECORD_MATCH)
		rec.PatternId = 1
		rec.Version = uint8(bpf.LastgaspLimitsCONTRACT_VERSION)
		copy(rec.Payload[:], "hello")
		edit(&rec)
		return bytes.Clone(unsafe.Slice((*byte)(unsafe.Pointer(&rec)), head+5))
	}
	stamp := func(uint64) time.Time { return time.Time{} }
	if l, err := ringbuf.Decode(record(func(*bpf.LastgaspRecord) {}), stamp); err != nil || string(l.Payload) != "hello" {
		t.Fatalf("a good record: %q, %v", l.Payload, err)
	}
	good := record(func(*bpf.LastgaspRecord) {})
	bad := map[string][]byte{
		"shorter than the head": good[:head-1],
		"payload cut":           good[:len(good)-1],
		"longer than len":       append(bytes.Clone(good), 0),
		// A version 1 record, 1,072 bytes whatever its line: no version.
		"version 1":          append(record(func(r *bpf.LastgaspRecord) { r.Version = 0 }), make([]byte, 1019)...),
		"a later version":    record(func(r *bpf.LastgaspRecord) { r.Version++ }),
		"len past payload":   record(func(r *bpf.LastgaspRecord) { r.Len, r.WireLen = 2000, 2000 }),
		"len past wire":      record(func(r *bpf.LastgaspRecord) { r.Len = 6 }),
		"no flag":            record(func(r *bpf.LastgaspRecord) { r.Flags = 0 }),
		"match without id":   record(func(r *bpf.LastgaspRecord) { r.PatternId = 0 }),
		"context with an id": record(func(r *bpf.LastgaspRecord) { r.Flags = uint8(bpf.LastgaspRecordFlagsRECORD_CONTEXT) }),
	}
	for name, raw := range bad {
		if _, err := ringbuf.Decode(raw, stamp); err == nil {
			t.Errorf("%s: decoded", name)
		}
	}
}

// cancelledOnSecondLook is a context that is not done when Read first
// looks and done from then on: the cancel (the end of a collector's
// settle time) lands while Read takes a line from the ring buffer.
type cancelledOnSecondLook struct {
	context.Context
	looks int
}

func (c *cancelledOnSecondLook) Err() error {
	c.looks++
	if c.looks > 1 {
		return context.Canceled
	}
	return nil
}

// TestRunKeepsALineReadAsItStops: a line Read took off the ring buffer
// (the kernel's copy is gone) while Run was being stopped must still be
// emitted: dropped, it would be lost to this run and to the next, which
// finds it neither in the ring buffer nor in the spool.
func TestRunKeepsALineReadAsItStops(t *testing.T) {
	prog, rd := load(t)
	if _, err := prog.XDP().Run(&ebpf.RunOptions{Data: packettest.Line("Kernel panic - not syncing: AAAA").Frame()}); err != nil {
		t.Fatal(err)
	}
	var got []string
	ctx := &cancelledOnSecondLook{Context: context.Background()}
	if err := rd.Run(ctx, func(l filter.Line) { got = append(got, string(l.Payload)) }); err != nil {
		t.Fatal(err)
	}
	left, err := rd.ReadWaiting(func(uint64) time.Time { return time.Now() }, func(filter.Line) {})
	if err != nil {
		t.Fatal(err)
	}
	if len(got)+left != 1 {
		t.Errorf("%d lines emitted, %d left in the ring buffer: the line read as Run stopped is lost", len(got), left)
	}
}
