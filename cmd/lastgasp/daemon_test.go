package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/lastgasp/lastgasp/internal/journal"
	"github.com/lastgasp/lastgasp/internal/testrig/clustertest"
	"github.com/lastgasp/lastgasp/internal/testrig/controlplane"
	"github.com/lastgasp/lastgasp/internal/testrig/kernelrig"
	"github.com/lastgasp/lastgasp/internal/testrig/testnet"
)

// runAsCommand makes this test binary, re-executed with it in its
// environment, be the lastgasp command: the daemon tests run "lastgasp
// run" as a process of its own, to kill it, signal it and restart it.
const runAsCommand = "LASTGASP_TEST_RUN_AS_COMMAND"

func TestMain(m *testing.M) {
	if os.Getenv(runAsCommand) == "1" {
		main()
	}
	code := m.Run()
	if shared.cp != nil {
		shared.cp.Stop()
	}
	os.Exit(code)
}

// shared is one control plane for the tests that need one, started by
// the first.
var shared struct {
	once       sync.Once
	cp         *controlplane.ControlPlane
	kubeconfig string
	err        error
}

// controlPlane returns a client of the shared control plane and the path
// of an administrator's kubeconfig for it.
func controlPlane(t testing.TB) (*kubernetes.Clientset, string) {
	t.Helper()
	testnet.RequireRoot(t)
	shared.once.Do(func() {
		if shared.cp, shared.err = controlplane.Start(context.Background()); shared.err != nil {
			return
		}
		kc, err := shared.cp.Kubeconfig()
		if err != nil {
			shared.err = err
			return
		}
		dir, err := os.MkdirTemp("", "lastgasp-kubeconfig-")
		if err != nil {
			shared.err = err
			return
		}
		shared.kubeconfig = filepath.Join(dir, "kubeconfig")
		shared.err = os.WriteFile(shared.kubeconfig, kc, 0o600)
	})
	if shared.err != nil {
		t.Fatal(shared.err)
	}
	cs, err := shared.cp.Client()
	if err != nil {
		t.Fatal(err)
	}
	return cs, shared.kubeconfig
}

// kubeconfigIn returns a kubeconfig that reaches the shared control
// plane from inside the network namespace ns, through a proxy listening
// there.
func kubeconfigIn(t testing.TB, ns *testnet.Netns) string {
	t.Helper()
	controlPlane(t)
	p, err := shared.cp.NewProxyIn(ns.Do)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	kc, err := os.ReadFile(shared.kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	if kc, err = p.Kubeconfig(kc); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(path, kc, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// daemonProc is "lastgasp run" running as a process of its own.
type daemonProc struct {
	cmd    *exec.Cmd
	out    *syncBuffer // stdout and stderr
	exited chan struct{}
	code   int
}

// startDaemon starts "lastgasp run args" in the network namespace ns
// (nil: this one) and waits until it says it is collecting. nsenter
// enters the network namespace only, so the daemon sees this mount
// namespace's bpffs (ip netns exec would remount /sys).
func startDaemon(t testing.TB, ns *testnet.Netns, args ...string) *daemonProc {
	t.Helper()
	return startCommand(t, ns, "lastgasp collecting", append([]string{"run"}, args...)...)
}

// startCommand starts "lastgasp args" as startDaemon does and waits until
// its output holds ready.
func startCommand(t testing.TB, ns *testnet.Netns, ready string, args ...string) *daemonProc {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	argv := append([]string{self}, args...)
	if ns != nil {
		argv = append([]string{"nsenter", "--net=" + ns.Path(), "--"}, argv...)
	}
	d := &daemonProc{out: &syncBuffer{}, exited: make(chan struct{})}
	d.cmd = exec.Command(argv[0], argv[1:]...)
	d.cmd.Env = append(os.Environ(), runAsCommand+"=1", "KUBERNETES_SERVICE_HOST=", "KUBERNETES_SERVICE_PORT=")
	d.cmd.Stdout, d.cmd.Stderr = d.out, d.out
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		d.cmd.Wait()
		d.code = d.cmd.ProcessState.ExitCode()
		close(d.exited)
	}()
	t.Cleanup(func() { d.kill() })
	deadline := time.Now().Add(15 * time.Second)
	for !strings.Contains(d.out.String(), ready) {
		select {
		case <-d.exited:
			t.Fatalf("lastgasp %s exited (%d) before %q:\n%s", args[0], d.code, ready, d.out.String())
		case <-time.After(20 * time.Millisecond): // the log is the only signal
		}
		if time.Now().After(deadline) {
			t.Fatalf("lastgasp %s never said %q:\n%s", args[0], ready, d.out.String())
		}
	}
	return d
}

// kill ends the daemon with SIGKILL, as a crash or an OOM kill would.
func (d *daemonProc) kill() {
	d.cmd.Process.Signal(syscall.SIGKILL)
	<-d.exited
}

// stop sends SIGTERM and returns the exit status, failing after timeout.
func (d *daemonProc) stop(t testing.TB, timeout time.Duration) int {
	t.Helper()
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
		return d.code
	case <-time.After(timeout):
		t.Fatalf("still running %v after SIGTERM:\n%s", timeout, d.out.String())
		return -1
	}
}

// logged returns the daemon's log records with the given message.
func logged(out *syncBuffer, msg string) []map[string]any {
	var recs []map[string]any
	for _, line := range strings.Split(out.String(), "\n") {
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) == nil && rec["msg"] == msg {
			recs = append(recs, rec)
		}
	}
	return recs
}

// waitLogged waits until the log holds n records with the message.
func waitLogged(t testing.TB, out *syncBuffer, msg string, n int, timeout time.Duration) []map[string]any {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if recs := logged(out, msg); len(recs) >= n {
			return recs
		}
		if time.Now().After(deadline) {
			t.Fatalf("%q not logged %d times in %v:\n%s", msg, n, timeout, out.String())
		}
		time.Sleep(20 * time.Millisecond) // the log is the only signal
	}
}

// makeNode registers a Node with the given InternalIP and n pods bound to
// it, in a namespace of its own; it returns the namespace.
func makeNode(t testing.TB, cs kubernetes.Interface, name, addr string, n int) string {
	t.Helper()
	clustertest.Node(t, cs, name, clustertest.InternalIP(addr), nil)
	ns := "ns-" + name
	clustertest.Pods(t, cs, ns, name, n)
	return ns
}

// podsLeft counts the pods left in a namespace.
func podsLeft(t testing.TB, cs kubernetes.Interface, ns string) int {
	t.Helper()
	pods, err := cs.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return len(pods.Items)
}

// waitNodeGone waits until the Node is deleted.
func waitNodeGone(t testing.TB, cs kubernetes.Interface, name string, timeout time.Duration, out *syncBuffer) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		_, err := cs.CoreV1().Nodes().Get(context.Background(), name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("node %s not deleted in %v:\n%s", name, timeout, out.String())
		}
		time.Sleep(50 * time.Millisecond) // polling the API server
	}
}

// pinPath returns a fresh bpffs directory for the test's pins, removed
// (with the links pinned in it: that detaches them) at the end.
func pinPath(t testing.TB) string {
	t.Helper()
	dir := fmt.Sprintf("/sys/fs/bpf/lastgasp-test-%d", time.Now().UnixNano())
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// TestDaemonRestart: the collector is killed with SIGKILL in the middle
// of a node's cleanup; a panic from a second node arrives while no
// collector runs. The next start finishes the first cleanup (the
// journal) and handles the second panic (the pinned program kept
// recording into the pinned ring buffer). Then SIGTERM: exit 0.
func TestDaemonRestart(t *testing.T) {
	cs, _ := controlPlane(t)
	pair := testnet.NewPair(t)
	kubeconfig := kubeconfigIn(t, pair.Collector.Netns)
	nsA := makeNode(t, cs, "restart-a", pair.Node.IPv4.String(), 40)
	nsB := makeNode(t, cs, "restart-b", pair.Node.IPv6.String(), 3)
	journalDir, pins := t.TempDir(), pinPath(t)
	args := []string{"--mode", "xdp", "--interface", pair.Collector.Ifname, "--xdp-mode", "native",
		"--kubeconfig", kubeconfig, "--confirm", "none", "--journal", journalDir, "--pin-path", pins,
		"--metrics-addr", "127.0.0.1:9466",
		// Two nodes of a tiny cluster both end: the share brake (30% of
		// the nodes in 10 minutes) would keep the second.
		"--max-ended-share", "1"}

	// A slow API client (10 calls a second, no burst): node A's 40 pods
	// take 16 s, time to kill the collector half-way.
	first := startDaemon(t, pair.Collector.Netns, append(args, "--kube-api-qps", "10", "--kube-api-burst", "1")...)
	replay(t, nodeSocket(t, pair), &net.UDPAddr{IP: pair.Collector.IPv4.AsSlice(), Port: 6666}, "sysrq-ext-v4.pcap")
	deadline := time.Now().Add(30 * time.Second)
	for podsLeft(t, cs, nsA) > 35 {
		if time.Now().After(deadline) {
			t.Fatalf("cleanup never started:\n%s", first.out.String())
		}
		time.Sleep(50 * time.Millisecond) // polling the API server
	}
	first.kill()
	left := podsLeft(t, cs, nsA)
	if left == 0 {
		t.Fatal("the cleanup finished before the kill: nothing to resume")
	}
	t.Logf("killed with %d of 40 pods left", left)

	// Node B panics while no collector runs.
	var v6 *net.UDPConn
	if err := pair.Node.Netns.Do(func() (err error) {
		v6, err = net.ListenUDP("udp6", &net.UDPAddr{IP: pair.Node.IPv6.AsSlice(), Port: 6665})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer v6.Close()
	replay(t, v6, &net.UDPAddr{IP: pair.Collector.IPv6.AsSlice(), Port: 6666}, "sysrq-ext-v4.pcap")

	second := startDaemon(t, pair.Collector.Netns, args...)
	waitNodeGone(t, cs, "restart-a", 60*time.Second, second.out)
	waitNodeGone(t, cs, "restart-b", 60*time.Second, second.out)
	if n, m := podsLeft(t, cs, nsA), podsLeft(t, cs, nsB); n != 0 || m != 0 {
		t.Errorf("%d and %d pods left", n, m)
	}
	resumed := logged(second.out, "resuming an unfinished incident from the journal")
	if len(resumed) != 1 || resumed[0]["source"] != pair.Node.IPv4.String() {
		t.Errorf("resumed %v", resumed)
	}
	// The second run assembles node B's panic, read from the pinned ring
	// buffer, and node A's again from the spool (the journal then knows
	// it: it is resumed, not taken on twice).
	bySource := map[any]int{}
	for _, inc := range logged(second.out, "incident") {
		bySource[inc["source"]]++
	}
	if bySource[pair.Node.IPv6.String()] != 1 || len(bySource) > 2 {
		t.Errorf("the second run assembled %v, want node B's panic once", bySource)
	}
	// Each incident is logged once as finished, with its node and how.
	finished := map[string]string{}
	for _, rec := range waitLogged(t, second.out, "incident finished", 2, 10*time.Second) {
		finished[rec["node"].(string)] = rec["outcome"].(string) + " " + rec["kind"].(string)
	}
	if finished["restart-a"] != "cleaned up sysrq" || finished["restart-b"] != "cleaned up sysrq" || len(finished) != 2 {
		t.Errorf("finished %v", finished)
	}
	scrapeFor(t, pair.Collector.Netns.Do, "127.0.0.1:9466",
		`lastgasp_journal_unfinished_incidents 0`,
		`lastgasp_journal_resumed_incidents_total 1`,
		`lastgasp_incidents_finished_total{outcome="cleaned up"} 2`,
		`lastgasp_first_packet_to_node_deleted_seconds_count 2`)

	if code := second.stop(t, 10*time.Second); code != exitOK {
		t.Errorf("exit %d after SIGTERM:\n%s", code, second.out.String())
	}
	j, unfinished, err := journal.Open(journal.Config{Dir: journalDir})
	if err != nil {
		t.Fatal(err)
	}
	j.Close()
	if len(unfinished) != 0 {
		t.Errorf("journal still holds %d unfinished incidents", len(unfinished))
	}
}

// TestDaemonDrain: the socket data path, configured by a config file;
// SIGTERM arrives while a node's cleanup is under way, and the daemon
// finishes it before it exits, within --shutdown-grace.
func TestDaemonDrain(t *testing.T) {
	cs, kubeconfig := controlPlane(t)
	ns := makeNode(t, cs, "drain-a", "127.0.0.1", 30)
	port := freeUDPPort(t)
	journalDir := t.TempDir()
	config := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(config, []byte(fmt.Sprintf(`# lastgasp run's flags, by name
mode: socket
listen: 127.0.0.1
port: [%d]
kubeconfig: %s
confirm: none
journal: %s
kube-api-qps: 20
kube-api-burst: 1
shutdown-grace: 30s
feed-addr: ""
`, port, kubeconfig, journalDir)), 0o600); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, nil, "--config", config, "--log-format", "json")

	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	replay(t, conn, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port}, "sysrq-v4.pcap")
	deadline := time.Now().Add(30 * time.Second)
	for podsLeft(t, cs, ns) == 30 {
		if time.Now().After(deadline) {
			t.Fatalf("cleanup never started:\n%s", d.out.String())
		}
		time.Sleep(50 * time.Millisecond) // polling the API server
	}
	if code := d.stop(t, 40*time.Second); code != exitOK {
		t.Errorf("exit %d after SIGTERM:\n%s", code, d.out.String())
	}
	// It exited: the cleanup was done first.
	if _, err := cs.CoreV1().Nodes().Get(context.Background(), "drain-a", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("node still there after a drained shutdown (%v):\n%s", err, d.out.String())
	}
	if n := podsLeft(t, cs, ns); n != 0 {
		t.Errorf("%d pods left", n)
	}
	if len(logged(d.out, "shutting down: letting cleanups in flight finish")) != 1 {
		t.Errorf("the drain was not logged:\n%s", d.out.String())
	}
	_, unfinished, err := journal.Open(journal.Config{Dir: journalDir})
	if err != nil || len(unfinished) != 0 {
		t.Errorf("journal: %d unfinished, %v", len(unfinished), err)
	}
}

func freeUDPPort(t *testing.T) int {
	t.Helper()
	probe, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer probe.Close()
	return probe.LocalAddr().(*net.UDPAddr).Port
}

// TestDaemonPatternReload: report-only (no kubeconfig, not in a
// cluster), XDP, a patterns file changed under the running daemon: by
// SIGHUP, by a change alone, and a broken file that is refused while the
// table in use keeps working. Each change reaches the kernel program.
func TestDaemonPatternReload(t *testing.T) {
	testnet.RequireRoot(t)
	pair := testnet.NewPair(t)
	patterns := filepath.Join(t.TempDir(), "patterns.yaml")
	write := func(content string) {
		t.Helper()
		// Write then rename, as a ConfigMap update does: never half a file.
		tmp := patterns + ".tmp"
		if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, patterns); err != nil {
			t.Fatal(err)
		}
	}
	write("patterns: []\n")
	journalDir := t.TempDir()
	d := startDaemon(t, pair.Collector.Netns, "--mode", "xdp", "--interface", pair.Collector.Ifname,
		"--patterns", patterns, "--journal", journalDir, "--metrics-addr", "127.0.0.1:9466", "--context-lines", "0")
	if len(logged(d.out, "report-only: no --kubeconfig and not running in a cluster; incidents are logged, nothing is written")) != 1 {
		t.Errorf("report-only not said at start-up:\n%s", d.out.String())
	}
	conn := nodeSocket(t, pair)
	dst := &net.UDPAddr{IP: pair.Collector.IPv4.AsSlice(), Port: 6666}
	send := func(line string) {
		t.Helper()
		if _, err := conn.WriteToUDP([]byte(line+"\n"), dst); err != nil {
			t.Fatal(err)
		}
	}
	metrics := func(want ...string) { t.Helper(); scrapeFor(t, pair.Collector.Netns.Do, "127.0.0.1:9466", want...) }

	// checkIncident checks the nth incident logged: fatal (the kernel's
	// own panic line), its cause the custom line, its kind the custom
	// pattern's.
	checkIncident := func(n int, cause string) {
		t.Helper()
		inc := waitLogged(t, d.out, "incident", n, 10*time.Second)[n-1]
		if inc["kind"] != "mce" || inc["fatal"] != true || inc["cause"] != cause || !strings.HasPrefix(inc["action"].(string), "none") {
			t.Errorf("incident %d: %v", n, inc)
		}
	}

	// The built-in table: the custom line is not matched.
	send("[  100.000000] lastgasp-test: going down")
	metrics(`lastgasp_xdp_netconsole_datagrams_total 1`, `lastgasp_xdp_matched_lines_total 0`)

	// SIGHUP: the new pattern matches, in the kernel, and the detector
	// gives the incident its kind.
	write("patterns:\n  - {prefix: \"lastgasp-test: going down\", kind: mce}\n")
	d.cmd.Process.Signal(syscall.SIGHUP)
	if rec := waitLogged(t, d.out, "patterns reloaded", 1, 10*time.Second)[0]; rec["why"] != "SIGHUP" || rec["patterns"] != 22.0 {
		t.Errorf("reload %v", rec)
	}
	send("[  101.000000] lastgasp-test: going down")
	send("[  101.000100] Kernel panic - not syncing: test one")
	checkIncident(1, "lastgasp-test: going down")

	// A change alone, replacing the table: the old custom pattern stops
	// matching, the new one matches.
	write("replace: true\npatterns:\n  - {prefix: \"lastgasp-test: other\", kind: mce}\n  - {prefix: \"Kernel panic - not syncing\", kind: panic}\n")
	if rec := waitLogged(t, d.out, "patterns reloaded", 2, 10*time.Second)[1]; rec["why"] != "the file changed" || rec["patterns"] != 3.0 { // the file's two and the end marker, always kept
		t.Errorf("reload %v", rec)
	}
	send("[  102.000000] lastgasp-test: going down")
	send("[  103.000000] lastgasp-test: other failure")
	send("[  103.000100] Kernel panic - not syncing: test two")
	metrics(`lastgasp_xdp_netconsole_datagrams_total 6`, `lastgasp_xdp_matched_lines_total 4`)
	checkIncident(2, "lastgasp-test: other failure")

	// A broken file: refused, and the table in use still works.
	write("replace: true\npatterns:\n  - {prefix: \"x\", kind: catastrophe}\n")
	d.cmd.Process.Signal(syscall.SIGHUP)
	waitLogged(t, d.out, "patterns file rejected; the table in use is kept", 1, 10*time.Second)
	send("[  104.000000] lastgasp-test: other failure again")
	send("[  104.000100] Kernel panic - not syncing: test three")
	checkIncident(3, "lastgasp-test: other failure again")
	metrics(`lastgasp_pattern_reloads_total{result="ok"} 2`, `lastgasp_pattern_reloads_total{result="rejected"} 1`,
		`lastgasp_incidents_finished_total{outcome="report-only"} 3`, `lastgasp_journal_unfinished_incidents 0`)

	if code := d.stop(t, 10*time.Second); code != exitOK {
		t.Errorf("exit %d after SIGTERM:\n%s", code, d.out.String())
	}
	// Report-only incidents are journaled, and done.
	segs, _ := filepath.Glob(filepath.Join(journalDir, "*.jsonl"))
	var all string
	for _, s := range segs {
		b, _ := os.ReadFile(s)
		all += string(b)
	}
	if strings.Count(all, `"op":"begin"`) != 3 || strings.Count(all, `"outcome":"report-only"`) != 3 {
		t.Errorf("journal:\n%s", all)
	}
}

// TestDaemonBadFlags: a wrong flag, a wrong config file or a broken
// patterns file is one line on stderr and exit status 2, before anything
// is attached.
func TestDaemonBadFlags(t *testing.T) {
	dir := t.TempDir()
	badConfig := filepath.Join(dir, "bad-config.yaml")
	os.WriteFile(badConfig, []byte("mode: socket\nportt: 6666\n"), 0o600)
	badValue := filepath.Join(dir, "bad-value.yaml")
	os.WriteFile(badValue, []byte("mode: socket\nport: [0]\n"), 0o600)
	badList := filepath.Join(dir, "bad-list.yaml")
	os.WriteFile(badList, []byte("mode: [xdp, socket]\n"), 0o600)
	badPatterns := filepath.Join(dir, "bad-patterns.yaml")
	os.WriteFile(badPatterns, []byte("patterns:\n  - {prefix: x, kind: nope}\n"), 0o600)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"--mode", "ebpf"},
		{"--config", badConfig},
		{"--config", badValue},
		{"--config", filepath.Join(dir, "missing.yaml")},
		{"--config", badList},
		{"--mode", "socket", "--patterns", badPatterns},
		{"--mode", "socket", "--shutdown-grace", "soon"},
	} {
		cmd := exec.Command(self, append([]string{"run"}, args...)...)
		cmd.Env = append(os.Environ(), runAsCommand+"=1")
		var stdout, stderr syncBuffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		cmd.Run()
		msg := stderr.String()
		if code := cmd.ProcessState.ExitCode(); code != exitUsage || stdout.String() != "" || strings.Count(msg, "\n") != 1 || !strings.HasPrefix(msg, "lastgasp run: ") {
			t.Errorf("%q: exit %d, stdout %q, stderr %q", args, code, stdout.String(), msg)
		}
	}
}

// TestDaemonBackstop: what the XDP program cannot put in the ring buffer
// reaches the backstop socket, and no line is lost or seen twice. First
// a panic line too long for one frame: IP fragments, which the program
// passes up for the stack to reassemble. Then a whole capture sent while
// the daemon is stopped (SIGSTOP) with a ring buffer of one page: the
// program records what fits and passes the rest, which waits in the
// socket's buffer.
func TestDaemonBackstop(t *testing.T) {
	testnet.RequireRoot(t)
	pair := testnet.NewPair(t)
	d := startDaemon(t, pair.Collector.Netns, "--mode", "xdp", "--interface", pair.Collector.Ifname,
		"--report-only", "--metrics-addr", "127.0.0.1:9466", "--ring-buffer-bytes", "4096")
	conn := nodeSocket(t, pair)
	dst := &net.UDPAddr{IP: pair.Collector.IPv4.AsSlice(), Port: 6666}
	metrics := func(want ...string) { t.Helper(); scrapeFor(t, pair.Collector.Netns.Do, "127.0.0.1:9466", want...) }

	// The node's path MTU is small (a tunnel, say): a line of 1000 bytes,
	// netconsole's largest, leaves it in two IP fragments.
	if _, err := pair.Node.Netns.IP("link", "set", "dev", pair.Node.Ifname, "mtu", "576"); err != nil {
		t.Fatal(err)
	}
	long := "[  200.000000] Kernel panic - not syncing: "
	long += strings.Repeat("x", 999-len(long))
	if _, err := conn.WriteToUDP([]byte(long+"\n"), dst); err != nil {
		t.Fatal(err)
	}
	inc := waitLogged(t, d.out, "incident", 1, 10*time.Second)[0]
	if inc["fatal"] != true || inc["kind"] != "panic" || inc["reason"] != long[len("[  200.000000] "):] {
		t.Errorf("incident from a fragmented datagram: %v", inc)
	}
	metrics(`lastgasp_xdp_fragment_packets_total 2`, `lastgasp_xdp_netconsole_datagrams_total 0`)

	d.cmd.Process.Signal(syscall.SIGSTOP)
	// Records are sized to their line: the capture's 32 lines would fit
	// in the page. Three lines of 1000 bytes from a second address of
	// the node take most of it first: they match "INFO: task " without
	// what makes it a hung task, so they are forwarded and make no
	// incident.
	b := pair.Node.IPv4.As4()
	b[3] = 3
	second := netip.AddrFrom4(b)
	if _, err := pair.Node.Netns.IP("addr", "add", second.String()+"/24", "dev", pair.Node.Ifname); err != nil {
		t.Fatal(err)
	}
	var conn2 *net.UDPConn
	if err := pair.Node.Netns.Do(func() (err error) {
		conn2, err = net.ListenUDP("udp4", &net.UDPAddr{IP: second.AsSlice(), Port: 6665})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer conn2.Close()
	for i := range 9 {
		filler := fmt.Sprintf("[  300.00000%d] INFO: task filler:1 ", i)
		filler += strings.Repeat("x", 400-len(filler)) + "\n" // 400: one IP datagram at MTU 576
		if _, err := conn2.WriteToUDP([]byte(filler), dst); err != nil {
			t.Fatal(err)
		}
	}
	replay(t, conn, dst, "sysrq-ext-v4.pcap")
	d.cmd.Process.Signal(syscall.SIGCONT)
	inc = waitLogged(t, d.out, "incident", 2, 10*time.Second)[1]
	// The same incident as when nothing overflows (TestRunCleansUp's
	// capture through the ring buffer alone): 32 lines, its id included.
	if inc["kind"] != "sysrq" || inc["fatal"] != true || inc["lines"] != 32.0 || inc["cause"] != "sysrq: Trigger a crash" {
		t.Errorf("incident through the ring buffer and the backstop: %v", inc)
	}
	body := get(t, pair.Collector.Netns.Do, "http://127.0.0.1:9466/metrics")
	full, socket := metricValue(body, "lastgasp_xdp_ringbuf_full_lines_total"), metricValue(body, "lastgasp_socket_datagrams_total")
	if !strings.Contains(body, `lastgasp_socket_dropped_datagrams_total 0`) || socket != full+1 {
		t.Errorf("the backstop socket: %d datagrams, want the %d overflowed lines and the fragmented one, none dropped:\n%s", socket, full, grepLastgasp(body))
	}
	if !strings.Contains(body, `lastgasp_decoder_duplicate_messages_total 0`) {
		t.Errorf("lines seen twice:\n%s", grepLastgasp(body))
	}
	if strings.Contains(body, `lastgasp_xdp_ringbuf_full_lines_total 0`+"\n") {
		t.Errorf("the ring buffer never overflowed: the backstop was not tested\n%s", grepLastgasp(body))
	}
	if code := d.stop(t, 10*time.Second); code != exitOK {
		t.Errorf("exit %d after SIGTERM:\n%s", code, d.out.String())
	}
}

// TestDaemonTail: lastgasp tail, as an operator runs it beside a
// collector: the incident as it comes, the forwarded lines with --lines,
// the records as JSON with --json, and a clear end when the collector
// stops.
func TestDaemonTail(t *testing.T) {
	port := freeUDPPort(t)
	metricsAddr, feedAddr := freeTCPAddr(t), freeTCPAddr(t)
	d := startDaemon(t, nil, "--mode", "socket", "--listen", "127.0.0.1", "--port", strconv.Itoa(port), "--report-only", "--metrics-addr", metricsAddr, "--feed-addr", feedAddr)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	type tailing struct {
		out, errs syncBuffer
		done      chan int
	}
	tail := func(args ...string) *tailing {
		tl := &tailing{done: make(chan int, 1)}
		cmd := exec.Command(self, append([]string{"tail", "--addr", feedAddr}, args...)...)
		cmd.Env = append(os.Environ(), runAsCommand+"=1")
		cmd.Stdout, cmd.Stderr = &tl.out, &tl.errs
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill() })
		go func() { cmd.Wait(); tl.done <- cmd.ProcessState.ExitCode() }()
		return tl
	}
	text, lines, raw := tail(), tail("--lines"), tail("--json")
	direct := func(fn func() error) error { return fn() }
	scrapeFor(t, direct, metricsAddr, "lastgasp_feed_watchers 3")

	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	replay(t, conn, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port}, "sysrq-v4.pcap")
	inc := waitLogged(t, d.out, "incident", 1, 10*time.Second)[0]
	want := fmt.Sprintf("incident %s  sysrq FATAL from 127.0.0.1: Kernel panic - not syncing: sysrq triggered crash\n      cause: sysrq: Trigger a crash\n      blamed: init", inc["id"])
	eventually := func(what string, b *syncBuffer, want ...string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			missing := ""
			for _, w := range want {
				if !strings.Contains(b.String(), w) {
					missing = w
				}
			}
			if missing == "" {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s lacks %q:\n%s", what, missing, b.String())
			}
			time.Sleep(20 * time.Millisecond) // the output is the only signal
		}
	}
	eventually("lastgasp tail", &text.out, want, "from 127.0.0.1: report-only")
	eventually("lastgasp tail --lines", &lines.out, want, "match   127.0.0.1  [    3.228076] sysrq: Trigger a crash", "context 127.0.0.1")
	eventually("lastgasp tail --json", &raw.out, `{"incident":{"id":"`+inc["id"].(string)+`"`, `{"finished":{"id":"`+inc["id"].(string)+`","source":"127.0.0.1","outcome":"report-only"}}`)
	if strings.Contains(text.out.String(), "context ") {
		t.Errorf("lines printed without --lines:\n%s", text.out.String())
	}

	if code := d.stop(t, 10*time.Second); code != exitOK {
		t.Errorf("collector exit %d", code)
	}
	for _, tl := range []*tailing{text, lines, raw} {
		select {
		case code := <-tl.done:
			if code != exitError || !strings.HasPrefix(tl.errs.String(), "lastgasp tail: the collector closed the feed") {
				t.Errorf("tail ended with %d: %q", code, tl.errs.String())
			}
		case <-time.After(10 * time.Second):
			t.Error("tail still running after the collector stopped")
		}
	}
}

// TestDaemonLiveKernel is the whole appliance with nothing replayed: a
// real kernel (Debian's 6.1, under qemu) boots with netconsole aimed at
// lastgasp run on the rig's tap device, and panics (a NULL dereference
// with panic_on_oops=1); lastgasp confirms the node dead with a real
// probe (the guest is gone: nothing answers) and ends its pods and its
// Node in the real API server.
func TestDaemonLiveKernel(t *testing.T) {
	rig := &kernelrig.Rig{Log: t.Logf}
	if why := rig.Missing(); why != "" {
		t.Skipf("skipped: the kernel rig %s", why)
	}
	cs, _ := controlPlane(t)
	ns := makeNode(t, cs, "live-kernel", kernelrig.NodeIPv4, 3)
	var d *daemonProc
	rig.Collector = func(netns *testnet.Netns, ifname string) error {
		d = startDaemon(t, netns, "--mode", "xdp", "--interface", ifname, "--kubeconfig", kubeconfigIn(t, netns), "--journal", t.TempDir())
		return nil
	}
	res, err := rig.Run(context.Background(), kernelrig.Scenario{Name: "live", Mode: "null", Extended: true, Sysctls: []string{"kernel.panic_on_oops=1"}}, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if !res.Panicked {
		t.Fatalf("the guest did not panic: %+v", res)
	}
	waitNodeGone(t, cs, "live-kernel", 60*time.Second, d.out)
	if n := podsLeft(t, cs, ns); n != 0 {
		t.Errorf("%d pods left", n)
	}
	inc := waitLogged(t, d.out, "incident", 1, time.Second)[0]
	if inc["kind"] != "oops" || inc["fatal"] != true || inc["module"] != "crashmod" || inc["reason"] != "Kernel panic - not syncing: Fatal exception" {
		t.Errorf("incident %v", inc)
	}
	if dead := logged(d.out, "node confirmed dead"); len(dead) != 1 || !strings.HasPrefix(dead[0]["evidence"].(string), "no answer from "+kernelrig.NodeIPv4+":10250") {
		t.Errorf("confirmation %v", dead)
	}
	if code := d.stop(t, 10*time.Second); code != exitOK {
		t.Errorf("exit %d after SIGTERM:\n%s", code, d.out.String())
	}
}

// metricValue returns the value of an unlabelled metric in a scrape, or
// -1 if it is not there.
func metricValue(body, name string) int {
	for _, line := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			n, err := strconv.Atoi(v)
			if err == nil {
				return n
			}
		}
	}
	return -1
}
