package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lastgasp/lastgasp/internal/packettest"
	"github.com/lastgasp/lastgasp/internal/testnet"
)

func TestRunBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{"run", "--mode", "ebpf"},
		{"run"}, // xdp needs an interface
		{"run", "--mode", "socket", "--forward", "keep"},
		{"run", "--mode", "socket", "--confirm", "maybe"},
		{"run", "--mode", "socket", "--xdp-mode", "fast"},
		{"run", "--mode", "socket", "--allow", "10.0.0.0/33"},
		{"run", "--mode", "socket", "--port", "0"},
		{"run", "--mode", "socket", "--listen", "nowhere"},
		{"run", "--mode", "socket", "--kube-api-qps", "0"},
		{"run", "--mode", "socket", "extra"},
	} {
		code, stdout, stderr := invoke(args...)
		if code != exitUsage || stdout != "" || strings.Count(strings.TrimSpace(stderr), "\n") != 0 || !strings.HasPrefix(stderr, "lastgasp run: ") {
			t.Errorf("%q: exit %d, stdout %q, stderr %q", args, code, stdout, stderr)
		}
	}
}

// syncBuffer is a bytes.Buffer safe for a writer and a reader.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// incidentLog waits for the collector to log an incident and returns it.
func incidentLog(t *testing.T, out *syncBuffer, timeout time.Duration) map[string]any {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		for _, line := range strings.Split(out.String(), "\n") {
			var rec map[string]any
			if json.Unmarshal([]byte(line), &rec) == nil && rec["msg"] == "incident" {
				return rec
			}
		}
		time.Sleep(50 * time.Millisecond) // the log is the only signal
	}
	t.Fatalf("no incident logged in %v:\n%s", timeout, out.String())
	return nil
}

// replay sends a capture's UDP payloads from conn to dst, in order.
func replay(t *testing.T, conn *net.UDPConn, dst *net.UDPAddr, capture string) {
	t.Helper()
	frames, err := packettest.ReadCapture(filepath.Join(fixtures, capture))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range frames {
		if _, err := conn.WriteToUDP(packettest.UDPPayload(f.Frame), dst); err != nil {
			t.Fatal(err)
		}
	}
}

// TestRunSocketReportOnly: the socket data path, report-only, on
// loopback: a real capture's panic comes out as one logged incident.
func TestRunSocketReportOnly(t *testing.T) {
	probe, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	port := probe.LocalAddr().(*net.UDPAddr).Port
	probe.Close()

	ctx, cancel := context.WithCancel(context.Background())
	var out syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- runCmd(ctx, []string{"--mode", "socket", "--listen", "127.0.0.1", "--port", strconv.Itoa(port), "--report-only"}, &out, &out)
	}()
	eventuallyLogged(t, &out, "lastgasp collecting")

	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	replay(t, conn, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port}, "sysrq-v4.pcap")

	inc := incidentLog(t, &out, 10*time.Second)
	if inc["kind"] != "sysrq" || inc["fatal"] != true || inc["source"] != "127.0.0.1" || !strings.HasPrefix(inc["action"].(string), "none") {
		t.Errorf("incident %v", inc)
	}
	cancel()
	if code := <-done; code != exitOK {
		t.Errorf("exit %d:\n%s", code, out.String())
	}
}

// TestRunXDPReportOnly: the XDP data path, attached natively to the
// collector's veth, a real capture's panic sent from the node's
// namespace: one logged incident, from the node's address.
func TestRunXDPReportOnly(t *testing.T) {
	testnet.RequireRoot(t)
	pair := testnet.NewPair(t)
	ctx, cancel := context.WithCancel(context.Background())
	var out syncBuffer
	done := make(chan int, 1)
	go func() {
		// Attaching finds the interface in the calling thread's namespace.
		pair.Collector.Netns.Do(func() error {
			done <- runCmd(ctx, []string{"--mode", "xdp", "--interface", pair.Collector.Ifname, "--xdp-mode", "native", "--report-only"}, &out, &out)
			return nil
		})
	}()
	eventuallyLogged(t, &out, "lastgasp collecting")

	var conn *net.UDPConn
	if err := pair.Node.Netns.Do(func() (err error) {
		conn, err = net.ListenUDP("udp", &net.UDPAddr{IP: pair.Node.IPv4.AsSlice(), Port: 6665})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	replay(t, conn, &net.UDPAddr{IP: pair.Collector.IPv4.AsSlice(), Port: 6666}, "null-oops-panic.pcap")

	inc := incidentLog(t, &out, 10*time.Second)
	if inc["kind"] != "oops" || inc["fatal"] != true || inc["source"] != pair.Node.IPv4.String() || inc["module"] != "crashmod" {
		t.Errorf("incident %v", inc)
	}
	cancel()
	if code := <-done; code != exitOK {
		t.Errorf("exit %d:\n%s", code, out.String())
	}
}

func eventuallyLogged(t *testing.T, out *syncBuffer, msg string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(out.String(), msg) {
		if time.Now().After(deadline) {
			t.Fatalf("never logged %q:\n%s", msg, out.String())
		}
		time.Sleep(20 * time.Millisecond) // the log is the only signal
	}
}
