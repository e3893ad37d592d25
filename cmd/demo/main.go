// Command demo shows lastgasp doing its job for real, on one machine with
// no cluster: a real kube-apiserver and etcd (and the Job controller), a
// "node" host in a network namespace, pods bound to it (a Job's among
// them), lastgasp run with its XDP program on the collector's side of a
// veth, and a real kernel's panic (a netconsole capture of a Debian 6.1
// kernel) sent by the node. It prints what happens as kubectl would show
// it: the pods failed with a DisruptionTarget condition and the kernel's
// reason, then gone; the Node gone; the Job unharmed. It needs root; make
// demo builds what it needs first.
//
// The node's namespace holds no IP address: a panicked kernel answers
// nothing, and netconsole writes whole frames itself, so the demo sends
// the capture's lines as raw Ethernet frames, as netpoll does. lastgasp
// probes the node before it deletes anything, and finds it silent.
//
// With --kernel (make demo-kernel) the node is a real kernel instead,
// Debian's 6.1 booted under qemu by the test rig (kernelrig), its
// netconsole pointed at lastgasp's XDP program on the rig's tap device;
// a test module dereferences NULL with panic_on_oops set, and the kernel
// panics live.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	"golang.org/x/sys/unix"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"

	"github.com/lastgasp/lastgasp/internal/cleanup"
	"github.com/lastgasp/lastgasp/internal/testrig/clustertest"
	"github.com/lastgasp/lastgasp/internal/testrig/controlplane"
	"github.com/lastgasp/lastgasp/internal/testrig/kernelrig"
	"github.com/lastgasp/lastgasp/internal/testrig/packettest"
	"github.com/lastgasp/lastgasp/internal/testrig/testnet"
)

// The demo's network: the collector's end of the veth stays in this
// namespace, the node's end goes into a namespace of its own.
const (
	nodeNetns     = "lastgasp-demo-node"
	collectorLink = "lgdemo-c"
	nodeLink      = "lgdemo-n"
	nodeName      = "node-a"
)

var (
	collectorAddr = netip.MustParseAddr("10.77.0.1")
	nodeAddr      = netip.MustParseAddr("10.77.0.2")
)

func main() {
	binary := flag.String("lastgasp", "bin/lastgasp", "the lastgasp binary")
	capture := flag.String("capture", "testdata/netconsole/sysrq-ext-v4.pcap", "the panic to replay: a netconsole capture")
	kernel := flag.Bool("kernel", false, "a real kernel panics live under qemu, instead of a replayed capture")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *binary, *capture, *kernel); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

// say prints a step in plain words.
func say(format string, args ...any) {
	fmt.Printf("\n==> "+format+"\n", args...)
}

func run(ctx context.Context, binary, capture string, kernel bool) error {
	if os.Geteuid() != 0 {
		return errors.New("needs root: network namespaces, XDP, the cached control plane")
	}
	if _, err := os.Stat(binary); err != nil {
		return fmt.Errorf("%w (make build makes it)", err)
	}
	var frames []packettest.Captured
	rig := &kernelrig.Rig{}
	if kernel {
		if why := rig.Missing(); why != "" {
			return fmt.Errorf("the kernel rig: %s", why)
		}
		say("Building the kernel rig's initramfs and test module (once, cached in %s).", kernelrig.DefaultCacheDir)
		if _, err := rig.Build(ctx); err != nil {
			return err
		}
	} else {
		var err error
		if frames, err = packettest.ReadCapture(capture); err != nil {
			return err
		}
	}
	work, err := os.MkdirTemp("", "lastgasp-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)

	say("Starting a real control plane: etcd, kube-apiserver, and kube-controller-manager running only the Job controller (built once from the Go module proxy, cached in /var/cache/lastgasp).")
	cp, err := controlplane.Start(ctx)
	if err != nil {
		return err
	}
	defer cp.Stop()
	fmt.Printf("    kube-apiserver %s at %s\n", filepath.Base(cp.Dir), cp.Config.Host)
	stopKCM, err := cp.StartControllerManager(ctx, "job")
	if err != nil {
		return err
	}
	defer stopKCM()
	if err := cp.InstallKernelCrashCRD(); err != nil {
		return err
	}
	fmt.Println("    the KernelCrash CRD installed (deploy/kernelcrash-crd.yaml): lastgasp keeps a record of each crash there")
	cs, err := cp.Client()
	if err != nil {
		return err
	}
	kubeconfig := filepath.Join(work, "kubeconfig")
	kc, err := cp.Kubeconfig()
	if err != nil {
		return err
	}
	if err := os.WriteFile(kubeconfig, kc, 0o600); err != nil {
		return err
	}

	addr := nodeAddr
	if kernel {
		addr = netip.MustParseAddr(kernelrig.NodeIPv4)
	}
	// The daemon is started here, or (--kernel) from the rig's goroutine
	// once its namespace exists; its log is at a known place.
	var daemon atomic.Pointer[lastgasp]
	defer func() {
		if d := daemon.Load(); d != nil {
			d.stop()
		}
	}()
	logPath := filepath.Join(work, "lastgasp.log")
	if !kernel {
		say("Making the node's host: network namespace %s, linked to this host by a veth pair (%s here, %s there). This side is the collector, %s.", nodeNetns, collectorLink, nodeLink, collectorAddr)
		cleanNet, err := makeNetwork()
		defer cleanNet()
		if err != nil {
			return err
		}
	}

	say("Registering Node %s (InternalIP %s) and its workload: two pods bound to it, and a Job whose pod the demo binds to it, as the scheduler would.", nodeName, addr)
	if err := makeWorkload(ctx, cs, addr); err != nil {
		return err
	}
	printPods(ctx, cs)

	if !kernel {
		say("Starting lastgasp run: the XDP program on %s, the cleanup controller on the API server, the journal, metrics on 127.0.0.1:9466.", collectorLink)
		d, err := startLastgasp(ctx, binary, kubeconfig, collectorLink, work, nil)
		if err != nil {
			return err
		}
		daemon.Store(d)
		fmt.Printf("    %s run --mode xdp --interface %s --kubeconfig ... --journal ... (log: %s)\n", binary, collectorLink, logPath)
	}

	// Watch the pods from here on: their last state before deletion is
	// in the watch's DELETED events.
	w, err := cs.CoreV1().Pods("").Watch(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	defer w.Stop()

	// start is when the panic's first packet can come: set again once
	// the rig's collector is ready (from the rig's goroutine).
	var startNanos atomic.Int64
	startNanos.Store(time.Now().UnixNano())
	start := func() time.Time { return time.Unix(0, startNanos.Load()) }
	rigDone := make(chan error, 1)
	if kernel {
		say("Booting the node: Debian's %s kernel under qemu (no KVM here: about 10 s), its netconsole sending every console line to %s:6666, where lastgasp runs (started in the rig's network namespace, on its tap device, as soon as it exists). Once up, a test module dereferences NULL with panic_on_oops=1: the kernel panics.", kernelrig.KernelRelease, kernelrig.CollectorIPv4)
		// Stopping the rig before returning (qemu killed, the
		// collector hook never called late) comes before stopping
		// the daemon: deferred after it.
		rigCtx, cancelRig := context.WithCancel(ctx)
		rigExited := make(chan struct{})
		defer func() { cancelRig(); <-rigExited }()
		rig.Collector = func(ns *testnet.Netns, ifname string) error {
			p, err := cp.NewProxyIn(ns.Do) // the API server, from inside the namespace
			if err != nil {
				return err
			}
			kc, err := p.Kubeconfig(kc)
			if err != nil {
				return err
			}
			path := filepath.Join(work, "kubeconfig-rig")
			if err := os.WriteFile(path, kc, 0o600); err != nil {
				return err
			}
			d, err := startLastgasp(rigCtx, binary, path, ifname, work, ns)
			if err != nil {
				return err
			}
			daemon.Store(d)
			fmt.Printf("    lastgasp run --mode xdp --interface %s, ready (log: %s)\n", ifname, logPath)
			startNanos.Store(time.Now().UnixNano())
			return nil
		}
		go func() {
			defer close(rigExited)
			res, err := rig.Run(rigCtx, kernelrig.Scenario{Name: "demo", Mode: "null", Extended: true, Sysctls: []string{"kernel.panic_on_oops=1"}, Timeout: 90 * time.Second}, work)
			if err == nil && !res.Panicked {
				err = fmt.Errorf("the guest did not panic (console: %s)", res.Console)
			}
			if err == nil {
				fmt.Printf("    %6.2fs  the node's kernel panicked; qemu exited (serial console: %s)\n", time.Since(start()).Seconds(), res.Console)
			}
			rigDone <- err
		}()
	} else {
		say("The node's kernel panics. Its netconsole sends every console line to %s:6666, the panic and its call trace included: %d frames of a real Debian 6.1 kernel's panic (%s), sent raw from the node's namespace.", collectorAddr, len(frames), filepath.Base(capture))
		rigDone <- sendFrames(frames)
	}

	say("lastgasp recognises the panic, confirms the node is dead (its kubelet port does not answer, and its Lease is not renewed), and ends the node's pods and the Node:")
	deadline := time.After(150 * time.Second)
	nodeGone := false
	var view podView
	pending := 3
	for pending > 0 || !nodeGone {
		select {
		case ev := <-w.ResultChan():
			if p, ok := ev.Object.(*corev1.Pod); ok && p.Spec.NodeName == nodeName {
				view.start = start()
				pending -= view.show(ev.Type, p)
			}
		case <-time.After(200 * time.Millisecond):
			if !nodeGone {
				_, err := cs.CoreV1().Nodes().Get(ctx, nodeName, metav1.GetOptions{})
				if apierrors.IsNotFound(err) {
					nodeGone = true
					fmt.Printf("    %6.2fs  node/%s deleted\n", time.Since(start()).Seconds(), nodeName)
				}
			}
		case err := <-rigDone:
			if err != nil {
				return err
			}
		case <-deadline:
			return fmt.Errorf("not done in 150 s; lastgasp's log is %s", logPath)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	fmt.Printf("\n    From the first panic packet to the Node deleted: %s by lastgasp's count (of which about 13 s make sure the node is silent, and its Lease unchanged, for longer than a live kubelet takes to renew it).\n", finishedAfter(logPath))

	say("What lastgasp logged about the incident:")
	printIncident(logPath)

	say("kubectl get events -A (what lastgasp recorded):")
	printEvents(ctx, cs)

	say("The Job: its pod's failure carries the DisruptionTarget condition, which its podFailurePolicy ignores; the Job controller makes a new pod (Pending: this cluster has no other node) and counts no failure.")
	if err := waitReplacement(ctx, cs); err != nil {
		return err
	}
	printPods(ctx, cs)
	printJob(ctx, cs)

	say("The record that outlives the node, its pods and the collector (lastgasp history reads the KernelCrash records):")
	fmt.Printf("    $ lastgasp history\n")
	if err := printHistory(ctx, binary, kubeconfig); err != nil {
		return err
	}

	say("kubectl get nodes")
	nodes, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	if len(nodes.Items) == 0 {
		fmt.Println("    No resources found")
	}
	for _, n := range nodes.Items {
		fmt.Println("    " + n.Name)
	}

	say("Done. Stopping lastgasp (SIGTERM) and the control plane, and removing what the demo made.")
	return nil
}

// makeNetwork creates the veth pair and the node's namespace; the node's
// end has no address (a dead kernel answers nothing, not even ARP).
func makeNetwork() (func(), error) {
	clean := func() {
		exec.Command("ip", "link", "del", collectorLink).Run()
		exec.Command("ip", "netns", "del", nodeNetns).Run()
	}
	clean() // what an interrupted run left
	for _, args := range [][]string{
		{"netns", "add", nodeNetns},
		{"link", "add", collectorLink, "type", "veth", "peer", "name", nodeLink},
		{"link", "set", nodeLink, "netns", nodeNetns},
		{"addr", "add", collectorAddr.String() + "/24", "dev", collectorLink},
		{"link", "set", collectorLink, "up"},
		{"-n", nodeNetns, "link", "set", nodeLink, "up"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			return clean, fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	return clean, nil
}

// makeWorkload registers the Node and its pods.
func makeWorkload(ctx context.Context, cs kubernetes.Interface, addr netip.Addr) error {
	node, err := cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: nodeName}}, metav1.CreateOptions{})
	if err != nil {
		return err
	}
	node.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: addr.String()}}
	node.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady", LastHeartbeatTime: metav1.Now(), LastTransitionTime: metav1.Now()}}
	if node, err = cs.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{}); err != nil {
		return err
	}
	// Its Lease, as its kubelet made it (the default 40 s duration: a
	// renewal every 10 s); nothing renews it once the kernel is gone.
	if err := clustertest.Lease(ctx, cs, node, 40); err != nil {
		return err
	}
	for _, ns := range []string{"web", "batch"} {
		if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			return err
		}
	}
	for _, p := range []struct{ ns, name string }{{"web", "frontend-0"}, {"batch", "train-step-7"}} {
		pod, err := cs.CoreV1().Pods(p.ns).Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: p.name},
			Spec:       corev1.PodSpec{NodeName: nodeName, Containers: []corev1.Container{{Name: "main", Image: "busybox"}}},
		}, metav1.CreateOptions{})
		if err != nil {
			return err
		}
		if err := markRunning(ctx, cs, pod); err != nil {
			return err
		}
	}
	zero := int32(0)
	_, err = cs.BatchV1().Jobs("batch").Create(ctx, &batchv1.Job{
		ObjectMeta: metav1.ObjectMeta{Name: "nightly-report"},
		Spec: batchv1.JobSpec{
			BackoffLimit: &zero, // any counted failure fails the Job
			PodFailurePolicy: &batchv1.PodFailurePolicy{Rules: []batchv1.PodFailurePolicyRule{{
				Action:          batchv1.PodFailurePolicyActionIgnore,
				OnPodConditions: []batchv1.PodFailurePolicyOnPodConditionsPattern{{Type: corev1.DisruptionTarget, Status: corev1.ConditionTrue}},
			}}},
			Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{
				RestartPolicy: corev1.RestartPolicyNever,
				Containers:    []corev1.Container{{Name: "report", Image: "busybox"}},
			}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return err
	}
	// The Job controller makes its pod; bind it to the node.
	deadline := time.Now().Add(30 * time.Second)
	for {
		pods, err := cs.CoreV1().Pods("batch").List(ctx, metav1.ListOptions{LabelSelector: "job-name=nightly-report"})
		if err != nil {
			return err
		}
		if len(pods.Items) == 1 {
			pod := &pods.Items[0]
			if err := cs.CoreV1().Pods("batch").Bind(ctx, &corev1.Binding{
				ObjectMeta: metav1.ObjectMeta{Name: pod.Name},
				Target:     corev1.ObjectReference{Kind: "Node", Name: nodeName},
			}, metav1.CreateOptions{}); err != nil {
				return err
			}
			if pod, err = cs.CoreV1().Pods("batch").Get(ctx, pod.Name, metav1.GetOptions{}); err != nil {
				return err
			}
			return markRunning(ctx, cs, pod)
		}
		if time.Now().After(deadline) {
			return errors.New("the Job controller made no pod in 30 s")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// markRunning reports the pod Running, as its kubelet would.
func markRunning(ctx context.Context, cs kubernetes.Interface, pod *corev1.Pod) error {
	now := metav1.Now()
	pod.Status.Phase = corev1.PodRunning
	pod.Status.StartTime = &now
	pod.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now}}
	pod.Status.ContainerStatuses = []corev1.ContainerStatus{{
		Name: pod.Spec.Containers[0].Name, Image: "busybox", Ready: true,
		State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}},
	}}
	_, err := cs.CoreV1().Pods(pod.Namespace).UpdateStatus(ctx, pod, metav1.UpdateOptions{})
	return err
}

// lastgasp is the running daemon.
type lastgasp struct {
	cmd     *exec.Cmd
	logPath string
}

func (l *lastgasp) stop() {
	l.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { l.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		l.cmd.Process.Kill()
	}
}

// startLastgasp starts lastgasp run on ifname, in the network namespace
// ns (nil: this one), and waits until it is ready.
func startLastgasp(ctx context.Context, binary, kubeconfig, ifname, work string, ns *testnet.Netns) (*lastgasp, error) {
	logPath := filepath.Join(work, "lastgasp.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logFile.Close()
	argv := []string{binary, "run", "--mode", "xdp", "--interface", ifname,
		"--kubeconfig", kubeconfig, "--journal", filepath.Join(work, "journal"),
		"--metrics-addr", "127.0.0.1:9466", "--log-format", "json"}
	do := func(fn func() error) error { return fn() }
	if ns != nil {
		// nsenter enters the network namespace only (ip netns exec
		// would also remount /sys).
		argv = append([]string{"nsenter", "--net=" + ns.Path(), "--"}, argv...)
		do = ns.Do
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	l := &lastgasp{cmd: cmd, logPath: logPath}
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := httpGet(ctx, do, "http://127.0.0.1:9466/readyz")
		if err == nil && resp == "ok\n" {
			return l, nil
		}
		if time.Now().After(deadline) {
			l.stop()
			log, _ := os.ReadFile(logPath)
			return nil, fmt.Errorf("lastgasp not ready in 30 s:\n%s", log)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// httpGet fetches url's body, its connection made inside do (see
// testnet.HTTPClient).
func httpGet(ctx context.Context, do func(func() error) error, url string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := testnet.HTTPClient(do).Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// sendFrames sends the capture's netconsole payloads from the node's
// namespace as raw Ethernet frames addressed to the collector, one a
// millisecond (about the pace of a panicking kernel's console).
func sendFrames(frames []packettest.Captured) error {
	dstMAC, err := os.ReadFile("/sys/class/net/" + collectorLink + "/address")
	if err != nil {
		return err
	}
	dst, err := net.ParseMAC(strings.TrimSpace(string(dstMAC)))
	if err != nil {
		return err
	}
	errc := make(chan error, 1)
	go func() {
		// A thread of its own enters the node's namespace.
		runtime.LockOSThread()
		errc <- func() error {
			f, err := os.Open("/var/run/netns/" + nodeNetns)
			if err != nil {
				return err
			}
			defer f.Close()
			if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
				return fmt.Errorf("enter the node's namespace: %w", err)
			}
			ifc, err := net.InterfaceByName(nodeLink)
			if err != nil {
				return err
			}
			fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, 0)
			if err != nil {
				return fmt.Errorf("raw socket: %w", err)
			}
			defer unix.Close(fd)
			to := &unix.SockaddrLinklayer{Ifindex: ifc.Index, Halen: 6}
			copy(to.Addr[:], dst)
			for _, c := range frames {
				frame := packettest.UDP{Src: nodeAddr, Dst: collectorAddr, SrcPort: 6665, DstPort: 6666,
					Payload: packettest.UDPPayload(c.Frame)}.Frame()
				copy(frame[0:6], dst)
				copy(frame[6:12], ifc.HardwareAddr)
				if err := unix.Sendto(fd, frame, 0, to); err != nil {
					return fmt.Errorf("send: %w", err)
				}
				time.Sleep(time.Millisecond)
			}
			return nil
		}()
		// The thread stays in the node's namespace: let it die with
		// this goroutine rather than serve another.
	}()
	return <-errc
}

// podView prints a pod's steps as watch events bring them: its
// condition and annotations, its phase Failed, its deletion; each once.
type podView struct {
	start time.Time
	shown map[types.UID]map[string]bool
}

// show prints what is new in one watch event, and returns 1 when the pod
// is gone.
func (v *podView) show(t watch.EventType, p *corev1.Pod) int {
	if v.shown == nil {
		v.shown = map[types.UID]map[string]bool{}
	}
	seen := v.shown[p.UID]
	if seen == nil {
		seen = map[string]bool{}
		v.shown[p.UID] = seen
	}
	at := time.Since(v.start).Seconds()
	name := fmt.Sprintf("pod/%s -n %s", p.Name, p.Namespace)
	if t == watch.Deleted {
		fmt.Printf("    %6.2fs  %s deleted (last phase %s)\n", at, name, p.Status.Phase)
		return 1
	}
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.DisruptionTarget && c.Status == corev1.ConditionTrue && !seen["condition"] {
			seen["condition"] = true
			fmt.Printf("    %6.2fs  %s: condition DisruptionTarget=True reason %s, annotated\n", at, name, c.Reason)
			fmt.Printf("              %s: %q\n", cleanup.AnnotationReason, p.Annotations[cleanup.AnnotationReason])
		}
	}
	if p.Status.Phase == corev1.PodFailed && !seen["failed"] {
		seen["failed"] = true
		fmt.Printf("    %6.2fs  %s: phase Failed\n", at, name)
	}
	return 0
}

// printPods prints the pods as "kubectl get pods -A -o wide" would.
func printPods(ctx context.Context, cs kubernetes.Interface) {
	fmt.Println("    $ kubectl get pods -A -o wide")
	pods, err := cs.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		fmt.Println("    ", err)
		return
	}
	sort.Slice(pods.Items, func(i, j int) bool {
		return pods.Items[i].Namespace+pods.Items[i].Name < pods.Items[j].Namespace+pods.Items[j].Name
	})
	tw := tabwriter.NewWriter(os.Stdout, 0, 8, 3, ' ', 0)
	fmt.Fprintln(tw, "    NAMESPACE\tNAME\tSTATUS\tNODE\tAGE")
	for _, p := range pods.Items {
		node := p.Spec.NodeName
		if node == "" {
			node = "<none>"
		}
		fmt.Fprintf(tw, "    %s\t%s\t%s\t%s\t%s\n", p.Namespace, p.Name, p.Status.Phase, node, time.Since(p.CreationTimestamp.Time).Round(time.Second))
	}
	tw.Flush()
}

// printEvents prints the Events lastgasp recorded.
func printEvents(ctx context.Context, cs kubernetes.Interface) {
	events, err := cs.CoreV1().Events("").List(ctx, metav1.ListOptions{})
	if err != nil {
		fmt.Println("    ", err)
		return
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 8, 3, ' ', 0)
	fmt.Fprintln(tw, "    NAMESPACE\tTYPE\tREASON\tOBJECT\tMESSAGE")
	for _, e := range events.Items {
		if e.ReportingController == "" || !strings.Contains(e.ReportingController, "lastgasp") {
			continue
		}
		msg := e.Message
		if len(msg) > 110 {
			msg = msg[:110] + "…"
		}
		fmt.Fprintf(tw, "    %s\t%s\t%s\t%s/%s\t%s\n", e.Namespace, e.Type, e.Reason, strings.ToLower(e.InvolvedObject.Kind), e.InvolvedObject.Name, msg)
	}
	tw.Flush()
}

// logRecords returns lastgasp's JSON log records with the message msg.
func logRecords(logPath, msg string) []map[string]any {
	f, err := os.Open(logPath)
	if err != nil {
		return nil
	}
	defer f.Close()
	var recs []map[string]any
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var rec map[string]any
		if json.Unmarshal(sc.Bytes(), &rec) == nil && (msg == "" || rec["msg"] == msg) {
			recs = append(recs, rec)
		}
	}
	return recs
}

// finishedAfter is how long after the first packet lastgasp finished
// the incident (the figure of its histogram), from its log.
func finishedAfter(logPath string) string {
	for _, rec := range logRecords(logPath, "incident finished") {
		if d, ok := rec["since_first_packet"].(string); ok {
			return d
		}
	}
	return "?"
}

// printIncident prints the incident and how it was finished, from
// lastgasp's JSON log.
func printIncident(logPath string) {
	for _, rec := range logRecords(logPath, "") {
		switch rec["msg"] {
		case "incident":
			fmt.Printf("    incident %v from %v: kind %v, fatal %v\n      reason: %v\n      cause:  %v\n      task:   %v (%v lines kept)\n",
				rec["id"], rec["source"], rec["kind"], rec["fatal"], rec["reason"], rec["cause"], rec["task"], rec["lines"])
		case "node confirmed dead":
			fmt.Printf("    node confirmed dead: %v\n", rec["evidence"])
		case "incident finished":
			fmt.Printf("    finished: %v, node %v, %v after the first packet\n", rec["outcome"], rec["node"], rec["since_first_packet"])
		}
	}
}

// waitReplacement waits for the Job controller's new pod.
func waitReplacement(ctx context.Context, cs kubernetes.Interface) error {
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		pods, err := cs.CoreV1().Pods("batch").List(ctx, metav1.ListOptions{LabelSelector: "job-name=nightly-report"})
		if err != nil {
			return err
		}
		if len(pods.Items) == 1 && pods.Items[0].Spec.NodeName == "" {
			return nil
		}
		time.Sleep(200 * time.Millisecond)
	}
	return errors.New("the Job controller made no new pod in 60 s")
}

// printJob prints the Job as "kubectl get job" would, with its counts.
func printJob(ctx context.Context, cs kubernetes.Interface) {
	job, err := cs.BatchV1().Jobs("batch").Get(ctx, "nightly-report", metav1.GetOptions{})
	if err != nil {
		fmt.Println("    ", err)
		return
	}
	status := "Running"
	for _, c := range job.Status.Conditions {
		if c.Status == corev1.ConditionTrue && (c.Type == batchv1.JobFailed || c.Type == batchv1.JobComplete) {
			status = string(c.Type)
		}
	}
	fmt.Println("\n    $ kubectl get job -n batch")
	tw := tabwriter.NewWriter(os.Stdout, 0, 8, 3, ' ', 0)
	fmt.Fprintln(tw, "    NAME\tSTATUS\tACTIVE\tFAILED (counted)\tBACKOFF LIMIT")
	fmt.Fprintf(tw, "    %s\t%s\t%d\t%d\t%d\n", job.Name, status, job.Status.Active, job.Status.Failed, *job.Spec.BackoffLimit)
	tw.Flush()
}

// printHistory runs "lastgasp history" against the demo's cluster, which
// prints one line a recorded crash, and indents what it prints.
func printHistory(ctx context.Context, binary, kubeconfig string) error {
	var out []byte
	var err error
	for deadline := time.Now().Add(10 * time.Second); ; {
		// The record is written pending before the first pod is
		// ended, and final as the incident finishes, just after the
		// Node's deletion and its Events.
		out, err = exec.CommandContext(ctx, binary, "history", "--kubeconfig", kubeconfig).CombinedOutput()
		if err != nil {
			return fmt.Errorf("lastgasp history: %w: %s", err, out)
		}
		if (strings.Count(string(out), "\n") > 1 && !strings.Contains(string(out), cleanup.OutcomePending)) || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond) // polling the API server
	}
	for _, line := range strings.Split(strings.TrimRight(string(out), "\n"), "\n") {
		fmt.Println("    " + line)
	}
	return nil
}
