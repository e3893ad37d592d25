package udpreceiver_test

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/lastgasp/lastgasp/internal/filter"
	"github.com/lastgasp/lastgasp/internal/udpreceiver"
)

// TestReceiver sends real datagrams over loopback and checks the receiver
// forwards the panic line and its context, and nothing else.
func TestReceiver(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rx, err := udpreceiver.Listen(ctx, "127.0.0.1:0", 1<<20, filter.New(filter.Config{BurstLines: 2, ContextLines: 2}))
	if err != nil {
		t.Fatal(err)
	}
	defer rx.Close()

	lines := make(chan filter.Line, 16)
	done := make(chan error, 1)
	go func() { done <- rx.Run(ctx, func(l filter.Line) { lines <- l }) }()

	conn, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(rx.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	sent := []string{
		"[    0.000000] Command line: console=ttyS0 panic=-1\n",
		"[    3.053091] Kernel panic - not syncing: Fatal exception\n",
		"[    3.053489] Kernel Offset: 0xf000000\n",
		"[    3.053490] ---[ end trace ]---\n",
		"[    3.053491] one line too many\n",
	}
	for _, s := range sent {
		if _, err := conn.Write([]byte(s)); err != nil {
			t.Fatal(err)
		}
	}
	want := []string{"match:" + sent[1], "context:" + sent[2], "context:" + sent[3]}
	for i, w := range want {
		select {
		case l := <-lines:
			if got := fmt.Sprintf("%s:%s", l.Flag, l.Payload); got != w {
				t.Errorf("line %d: %q, want %q", i, got, w)
			}
			if l.Source.Addr().String() != "127.0.0.1" {
				t.Errorf("line %d from %v", i, l.Source)
			}
		case <-ctx.Done():
			t.Fatalf("line %d never came", i)
		}
	}
	// The receiver has read all five once the counters say so.
	for rx.Counters().Datagrams < uint64(len(sent)) && ctx.Err() == nil {
		time.Sleep(10 * time.Millisecond) // no event to wait on but the counter
	}
	select {
	case l := <-lines:
		t.Errorf("unexpected line %q", l.Payload)
	default:
	}
	c := rx.Counters()
	if c.Reads < 1 || c.Reads > 5 {
		t.Errorf("%d reads for 5 datagrams", c.Reads)
	}
	c.Reads = 0
	if c != (udpreceiver.Counters{Datagrams: 5, Matched: 1, Context: 2}) {
		t.Errorf("counters %+v", c)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run after cancel: %v", err)
	}
}

// TestDrops: datagrams the kernel drops because the socket's buffer is
// full are counted (SO_MEMINFO), so a lossy collector says so.
func TestDrops(t *testing.T) {
	rx, conn := listenAndDial(t, 4096, filter.New(filter.Config{}))
	line := make([]byte, 1000)
	for range 100 { // nothing reads: a few fit, the rest are dropped
		if _, err := conn.Write(line); err != nil {
			t.Fatal(err)
		}
	}
	if c := rx.Counters(); c.Drops < 80 || c.Drops > 100 {
		t.Errorf("%d drops counted of 100 datagrams into an 8 KiB buffer", c.Drops)
	}
}

// TestBatchedReads: 300 datagrams wait in the socket's buffer before the
// receiver starts; it must read them in batches (recvmmsg), a few system
// calls, not one a datagram, and judge every one: the panic line among
// them is forwarded from its own source.
func TestBatchedReads(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rx, conn := listenAndDial(t, 4<<20, filter.New(filter.Config{NoContext: true}))
	const sent = 300
	for i := range sent {
		line := fmt.Sprintf("[    3.%06d] ordinary line %d\n", i, i)
		if i == 200 {
			line = "[    3.053091] Kernel panic - not syncing: Fatal exception\n"
		}
		if _, err := conn.Write([]byte(line)); err != nil {
			t.Fatal(err)
		}
	}
	lines := make(chan filter.Line, sent)
	done := make(chan error, 1)
	go func() { done <- rx.Run(ctx, func(l filter.Line) { lines <- l }) }()
	for rx.Counters().Datagrams < sent && ctx.Err() == nil {
		time.Sleep(10 * time.Millisecond) // no event to wait on but the counter
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	c := rx.Counters()
	if c.Datagrams != sent || c.Drops != 0 {
		t.Fatalf("read %d datagrams, %d dropped, want %d and none", c.Datagrams, c.Drops, sent)
	}
	// 300 datagrams fit in one batch of 512; allow a few calls in case
	// the kernel hands them over in parts.
	if c.Reads > 4 {
		t.Errorf("%d read calls for %d datagrams waiting: not batched", c.Reads, sent)
	}
	if len(lines) != 1 {
		t.Fatalf("%d lines forwarded, want the panic line alone", len(lines))
	}
	if l := <-lines; l.Flag != filter.Match || l.Source != conn.LocalAddr().(*net.UDPAddr).AddrPort() {
		t.Errorf("forwarded %s from %v, want the match from %v", l.Flag, l.Source, conn.LocalAddr())
	}
}

// listenAndDial opens a receiver on loopback with a buffer of size bytes
// and a UDP socket connected to it, both closed at the test's end.
func listenAndDial(t *testing.T, size int, f *filter.Filter) (*udpreceiver.Receiver, *net.UDPConn) {
	t.Helper()
	rx, err := udpreceiver.Listen(t.Context(), "127.0.0.1:0", size, f)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rx.Close() })
	conn, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(rx.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return rx, conn
}
