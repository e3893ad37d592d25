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
	if c := rx.Counters(); c != (udpreceiver.Counters{Datagrams: 5, Matched: 1, Context: 2}) {
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
	ctx := context.Background()
	rx, err := udpreceiver.Listen(ctx, "127.0.0.1:0", 4096, filter.New(filter.Config{}))
	if err != nil {
		t.Fatal(err)
	}
	defer rx.Close()
	conn, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(rx.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
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
