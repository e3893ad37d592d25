package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/lastgasp/lastgasp/internal/cleanup"
	"github.com/lastgasp/lastgasp/internal/testrig/packettest"
	"github.com/lastgasp/lastgasp/internal/testrig/testnet"
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
		{"run", "--mode", "socket", "--pod-action", "evict"},
		{"run", "--mode", "socket", "--memory-budget", "1Mi"},
		{"run", "--mode", "socket", "--memory-budget", "lots"},
		{"run", "--mode", "socket", "--socket-buffer", "1Ki"},
		{"run", "--mode", "socket", "--socket-buffer", "2Gi"},
		{"run", "--mode", "socket", "--socket-buffer", "big"},
		{"run", "--mode", "socket", "--node-selector", "a in ("},
		{"run", "--mode", "socket", "--brake-lease", "no-namespace"},
		{"run", "--mode", "socket", "--max-ended-share", "0"},
		{"run", "--mode", "socket", "--forgery-backoff-max", "1s"}, // less than --forgery-backoff
		{"run", "--mode", "socket", "--undecided-for", "0s"},
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
func replay(t testing.TB, conn *net.UDPConn, dst *net.UDPAddr, capture string) {
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

// socketRun is a "lastgasp run --mode socket --report-only" on loopback,
// in the test's process, with its metrics served.
type socketRun struct {
	running
	port        int
	metricsAddr string
}

// startSocketRun starts a socket-mode, report-only run on a free port of
// 127.0.0.1 with more args, and waits until it says it is collecting.
func startSocketRun(t testing.TB, args ...string) *socketRun {
	t.Helper()
	probe, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	r := &socketRun{port: probe.LocalAddr().(*net.UDPAddr).Port, metricsAddr: freeTCPAddr(t)}
	probe.Close()
	ctx, cancel := context.WithCancel(context.Background())
	r.done, r.cancel = make(chan int, 1), cancel
	args = append([]string{"--mode", "socket", "--listen", "127.0.0.1", "--port", strconv.Itoa(r.port), "--report-only", "--metrics-addr", r.metricsAddr}, args...)
	go func() { r.done <- runCmd(ctx, args, &r.out, &r.out) }()
	eventuallyLogged(t, &r.out, "lastgasp collecting")
	return r
}

// TestRunSocketReportOnly: the socket data path, report-only, on
// loopback: a real capture's panic comes out as one logged incident.
func TestRunSocketReportOnly(t *testing.T) {
	r := startSocketRun(t)

	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	replay(t, conn, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: r.port}, "sysrq-v4.pcap")

	inc := incidentLog(t, &r.out, 10*time.Second)
	if inc["kind"] != "sysrq" || inc["fatal"] != true || inc["source"] != "127.0.0.1" || !strings.HasPrefix(inc["action"].(string), "none") {
		t.Errorf("incident %v", inc)
	}
	direct := func(fn func() error) error { return fn() }
	scrapeFor(t, direct, r.metricsAddr, `lastgasp_incidents_total{fatal="true",kind="sysrq"} 1`, `lastgasp_decoder_messages_total 37`,
		// Every line from the sysrq line to the panic's end marker.
		`lastgasp_socket_matched_lines_total 2`, `lastgasp_socket_context_lines_total 35`, `lastgasp_socket_dropped_datagrams_total 0`)
	for _, path := range []string{"/healthz", "/readyz"} {
		if body := get(t, direct, "http://"+r.metricsAddr+path); body != "ok\n" {
			t.Errorf("%s: %q", path, body)
		}
	}
	r.stop(t)
}

// TestRunXDPReportOnly: the XDP data path, attached natively to the
// collector's veth, a real capture's panic sent from the node's
// namespace: one logged incident, from the node's address.
func TestRunXDPReportOnly(t *testing.T) {
	testnet.RequireRoot(t)
	pair := testnet.NewPair(t)
	c := startCollector(t, pair, "--mode", "xdp", "--interface", pair.Collector.Ifname, "--xdp-mode", "native", "--report-only", "--metrics-addr", "127.0.0.1:9466")
	replay(t, nodeSocket(t, pair), &net.UDPAddr{IP: pair.Collector.IPv4.AsSlice(), Port: 6666}, "null-oops-panic.pcap")

	inc := incidentLog(t, &c.out, 10*time.Second)
	if inc["kind"] != "oops" || inc["fatal"] != true || inc["source"] != pair.Node.IPv4.String() || inc["module"] != "crashmod" {
		t.Errorf("incident %v", inc)
	}
	// The metrics are served in the collector's namespace.
	scrapeFor(t, pair.Collector.Netns.Do, "127.0.0.1:9466",
		`lastgasp_xdp_matched_lines_total 3`, `lastgasp_xdp_netconsole_datagrams_total 418`,
		`lastgasp_incidents_total{fatal="true",kind="oops"} 1`, `lastgasp_ringbuf_malformed_records_total 0`)
	c.stop(t)
}

// running is a "lastgasp run" running in the test's process.
type running struct {
	out    syncBuffer
	done   chan int
	cancel context.CancelFunc
}

// startCollector runs "lastgasp run args" inside the pair's collector
// namespace (attaching finds the interface in the calling thread's
// namespace), and waits until it says it is collecting.
func startCollector(t testing.TB, pair *testnet.Pair, args ...string) *running {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{done: make(chan int, 1), cancel: cancel}
	go func() {
		pair.Collector.Netns.Do(func() error {
			r.done <- runCmd(ctx, args, &r.out, &r.out)
			return nil
		})
	}()
	eventuallyLogged(t, &r.out, "lastgasp collecting")
	return r
}

// stop ends the run and checks it exited cleanly.
func (r *running) stop(t testing.TB) {
	t.Helper()
	r.cancel()
	if code := <-r.done; code != exitOK {
		t.Errorf("exit %d:\n%s", code, r.out.String())
	}
}

// nodeSocket is netconsole's socket on the node: its address, port 6665.
func nodeSocket(t testing.TB, pair *testnet.Pair) *net.UDPConn {
	t.Helper()
	var conn *net.UDPConn
	if err := pair.Node.Netns.Do(func() (err error) {
		conn, err = net.ListenUDP("udp", &net.UDPAddr{IP: pair.Node.IPv4.AsSlice(), Port: 6665})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func eventuallyLogged(t testing.TB, out *syncBuffer, msg string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(out.String(), msg) {
		if time.Now().After(deadline) {
			t.Fatalf("never logged %q:\n%s", msg, out.String())
		}
		time.Sleep(20 * time.Millisecond) // the log is the only signal
	}
}

// TestRunCleansUp is the whole chain: a real kernel's panic, sent from
// the node's namespace, through the XDP program attached to the
// collector's veth, assembled into an incident, and applied to a real
// API server: the node's pods failed and deleted, the Node deleted.
// (--confirm=none: a probe from this test would leave from the root
// namespace; the probe is tested in package cleanup, from a namespace.)
func TestRunCleansUp(t *testing.T) {
	cs, kcPath := controlPlane(t)
	pair := testnet.NewPair(t)
	ctx := context.Background()
	node, err := cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-1"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	node.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: pair.Node.IPv4.String()}}
	if _, err := cs.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		_, err := cs.CoreV1().Pods("default").Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "job-" + strconv.Itoa(i)},
			Spec:       corev1.PodSpec{NodeName: node.Name, Containers: []corev1.Container{{Name: "c", Image: "busybox"}}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
	}

	c := startCollector(t, pair, "--mode", "xdp", "--interface", pair.Collector.Ifname, "--kubeconfig", kcPath, "--confirm", "none")
	// The controller's caches must hold the node and pods: they sync
	// before its workers start, and the incident waits in the queue.
	conn := nodeSocket(t, pair)
	start := time.Now()
	replay(t, conn, &net.UDPAddr{IP: pair.Collector.IPv4.AsSlice(), Port: 6666}, "sysrq-ext-v4.pcap")

	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := cs.CoreV1().Nodes().Get(ctx, node.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("node not deleted:\n%s", c.out.String())
		}
		time.Sleep(50 * time.Millisecond) // polling the API server
	}
	t.Logf("from the first packet to the Node deleted: %v", time.Since(start).Round(time.Millisecond))
	pods, _ := cs.CoreV1().Pods("default").List(ctx, metav1.ListOptions{})
	if len(pods.Items) != 0 {
		t.Errorf("%d pods left", len(pods.Items))
	}
	// The Events come after the Node's deletion, off its critical path,
	// and through a client of their own (its rate limit apart from the
	// one the next node's end needs), which the API server knows by its
	// field manager.
	var reasons map[string]int
	for deadline := time.Now().Add(10 * time.Second); ; {
		events, _ := cs.CoreV1().Events("default").List(ctx, metav1.ListOptions{})
		reasons = map[string]int{}
		for _, e := range events.Items {
			if n := e.InvolvedObject.Name; n == node.Name || strings.HasPrefix(n, "job-") { // the control plane is shared
				reasons[e.Reason]++
				if len(e.ManagedFields) == 0 || e.ManagedFields[0].Manager != cleanup.EventFieldManager {
					t.Errorf("event %s/%s written by %+v, want the Events' own client %q", e.Reason, n, e.ManagedFields, cleanup.EventFieldManager)
				}
			}
		}
		if reasons["NodeKernelPanic"] >= 4 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond) // polling the API server
	}
	if reasons["NodeKernelPanic"] != 4 {
		t.Errorf("events %v, want 4 NodeKernelPanic (3 pods, the node)", reasons)
	}
	c.stop(t)
}

// freeTCPAddr returns a loopback address with a port free a moment ago.
func freeTCPAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// get fetches url; its connection is made through do (inside a
// namespace: see testnet.HTTPClient).
func get(t *testing.T, do func(func() error) error, url string) string {
	t.Helper()
	resp, err := testnet.HTTPClient(do).Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return string(body)
}

// scrapeFor scrapes /metrics until every wanted sample line is there
// (the decoder's counters are published every 500 ms).
func scrapeFor(t *testing.T, do func(func() error) error, addr string, want ...string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		body := get(t, do, "http://"+addr+"/metrics")
		missing := ""
		for _, w := range want {
			if !strings.Contains(body, w+"\n") {
				missing = w
				break
			}
		}
		if missing == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("metrics lack %q:\n%s", missing, grepLastgasp(body))
		}
		time.Sleep(100 * time.Millisecond) // the counters are published on a tick
	}
}

func grepLastgasp(body string) string {
	var out []string
	for _, l := range strings.Split(body, "\n") {
		if strings.HasPrefix(l, "lastgasp_") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestStopReadsOn: SIGTERM (here: the run's context) arrives while an
// Oops is half sent, its panic line still on its way; the collector reads
// on for the settle time before it flushes, so the incident is the fatal
// one, not an Oops closed as survivable for want of its last line.
func TestStopReadsOn(t *testing.T) {
	testnet.RequireRoot(t)
	pair := testnet.NewPair(t)
	c := startCollector(t, pair, "--mode", "xdp", "--interface", pair.Collector.Ifname, "--xdp-mode", "native", "--report-only")
	frames, err := packettest.ReadCapture(filepath.Join(fixtures, "null-oops-panic.pcap"))
	if err != nil {
		t.Fatal(err)
	}
	panicAt := slices.IndexFunc(frames, func(f packettest.Captured) bool {
		return bytes.Contains(packettest.UDPPayload(f.Frame), []byte("Kernel panic - not syncing"))
	})
	if panicAt < 0 {
		t.Fatal("no panic line in the capture")
	}
	conn, dst := nodeSocket(t, pair), &net.UDPAddr{IP: pair.Collector.IPv4.AsSlice(), Port: 6666}
	send := func(fs []packettest.Captured) {
		for _, f := range fs {
			if _, err := conn.WriteToUDP(packettest.UDPPayload(f.Frame), dst); err != nil {
				t.Fatal(err)
			}
		}
	}
	send(frames[:panicAt])
	time.Sleep(200 * time.Millisecond) // the Oops is read and assembled
	c.cancel()
	time.Sleep(500 * time.Millisecond) // the panic line comes after the stop
	send(frames[panicAt:])
	if code := <-c.done; code != exitOK {
		t.Errorf("exit %d:\n%s", code, c.out.String())
	}
	inc := incidentLog(t, &c.out, time.Second)
	if inc["kind"] != "oops" || inc["fatal"] != true {
		t.Errorf("incident %v, want the fatal Oops", inc)
	}
}

// TestRunJournalUnwritable: a journal whose segment cannot be written at
// start (its name taken by a directory; in the field, a full disk) does
// not stop the collector, which would crash-loop: it runs, acts on what
// it hears, and /readyz says it is not ready and why, until a retry finds
// the journal writable again.
func TestRunJournalUnwritable(t *testing.T) {
	journalDir := t.TempDir()
	blocker := filepath.Join(journalDir, fmt.Sprintf("incidents-%020d.jsonl", 1))
	if err := os.Mkdir(blocker, 0o700); err != nil {
		t.Fatal(err)
	}
	r := startSocketRun(t, "--journal", journalDir)
	direct := func(fn func() error) error { return fn() }
	if body := get(t, direct, "http://"+r.metricsAddr+"/readyz"); !strings.Contains(body, "not ready: journal") {
		t.Errorf("/readyz with an unwritable journal: %q", body)
	}
	if body := get(t, direct, "http://"+r.metricsAddr+"/healthz"); body != "ok\n" {
		t.Errorf("/healthz: %q", body)
	}

	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	replay(t, conn, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: r.port}, "sysrq-v4.pcap")
	if inc := incidentLog(t, &r.out, 10*time.Second); inc["kind"] != "sysrq" {
		t.Errorf("incident %v", inc)
	}

	os.Remove(blocker)
	deadline := time.Now().Add(2*journalRetryEvery + 5*time.Second)
	for get(t, direct, "http://"+r.metricsAddr+"/readyz") != "ok\n" {
		if time.Now().After(deadline) {
			t.Fatalf("still not ready after the journal became writable:\n%s", r.out.String())
		}
		time.Sleep(100 * time.Millisecond) // /readyz is the only signal
	}
	r.stop(t)
}

// TestForgeryFloodLogs: 300 forged panics from 300 addresses (a trigger
// line each) are 300 incidents counted, but the log holds a burst of
// each kind of line and one line with the count of the rest, not a line
// or more an incident: a flood of forgeries cannot flood the log.
func TestForgeryFloodLogs(t *testing.T) {
	r := startSocketRun(t)
	const forged = 300
	for i := range forged {
		src := net.IPv4(127, 1, byte(i>>8), byte(1+i&0xff))
		conn, err := net.DialUDP("udp", &net.UDPAddr{IP: src}, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: r.port})
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(conn, "[ 12.%06d] sysrq: Trigger a crash\n", i)
		conn.Close()
	}
	direct := func(fn func() error) error { return fn() }
	time.Sleep(5 * time.Second) // the incidents' quiet period: they close
	scrapeFor(t, direct, r.metricsAddr, fmt.Sprintf(`lastgasp_incidents_total{fatal="false",kind="sysrq"} %d`, forged))
	r.stop(t)
	lines := strings.Count(r.out.String(), "\n")
	suppressed := 0.0
	for _, msg := range []string{"incident (more, not logged one by one)", "incident finished (more, not logged one by one)"} {
		for _, rec := range logged(&r.out, msg) {
			suppressed += rec["suppressed"].(float64)
		}
	}
	if lines > 60 || suppressed != 2*(forged-20) {
		t.Errorf("%d log lines for %d forged incidents, %v suppressed and counted", lines, forged, suppressed)
	}
}
