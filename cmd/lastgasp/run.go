package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/lastgasp/lastgasp/internal/cleanup"
	"github.com/lastgasp/lastgasp/internal/crashrecord"
	"github.com/lastgasp/lastgasp/internal/detect"
	"github.com/lastgasp/lastgasp/internal/liveness"
	"github.com/lastgasp/lastgasp/internal/pattern"
	"github.com/lastgasp/lastgasp/internal/storm"
	"github.com/lastgasp/lastgasp/internal/udpreceiver"
	"github.com/lastgasp/lastgasp/loader"
)

// runConfig is every flag of "lastgasp run", checked.
type runConfig struct {
	mode          string // xdp or socket
	interfaces    []string
	ports         []uint16
	listen        string // socket mode: the address, port excluded
	xdpMode       loader.XDPMode
	forwardPass   bool
	contextLines  int
	pinPath       string
	kubeconfig    string
	dryRun        bool
	confirm       bool // probe before deleting (false: --confirm=none)
	kubeletPort   int
	allowed       []netip.Prefix
	maxDeletions  int
	qps           float64
	burst         int
	logFormat     string
	reportOnlyArg bool // --report-only: never write to a cluster
	podAction     cleanup.PodAction
	keepNode      bool
	taintNonFatal bool
	metricsAddr   string
	feedAddr      string
	journalDir    string         // --journal: where incidents are kept until done
	patternsFile  string         // --patterns: the pattern table, reloaded on change
	patterns      *pattern.Table // the table to start with: the file's, or the built-in one
	patternsData  []byte         // the file's bytes, as read for patterns
	shutdownGrace time.Duration  // how long SIGTERM waits for cleanups in flight
	backstop      bool           // xdp drop mode: a socket takes what the program passes
	ringBytes     uint32         // the ring buffer's size
	memoryBudget  int            // bytes decoding and assembling may hold
	socketBuffer  int            // the UDP sockets' receive buffer, bytes
	safety        cleanup.Safety // the guards: undecided, forgery backoff, node selector, brakes
	// historyRetention is how long KernelCrash records are kept.
	historyRetention time.Duration
	// stormNodes and stormWindow: more than stormNodes nodes ended by
	// one crash signature within stormWindow is a storm.
	stormNodes  int
	stormWindow time.Duration
}

// parseRun parses and checks the flags; a wrong value is one line on
// stderr and exit status 2, before anything is attached.
func parseRun(args []string, stderr io.Writer) (runConfig, error) {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // a wrong flag is one line (runCmd's); -h prints the usage
	var c runConfig
	ports := portList{ports: []uint16{loader.DefaultPort}}
	var ifaces, allow stringList
	fs.StringVar(&c.mode, "mode", "xdp", "data path: xdp (the XDP program) or socket (a UDP socket)")
	fs.Var(&ifaces, "interface", "interface(s) to attach the XDP program to (xdp mode), comma-separated or repeated")
	fs.Var(&ports, "port", "netconsole UDP port(s), comma-separated or repeated")
	fs.StringVar(&c.listen, "listen", "::", "address the UDP sockets listen on: the socket data path, or the backstop in xdp mode")
	xdpMode := fs.String("xdp-mode", "auto", "XDP attach mode: native, generic or auto (native, falling back to generic)")
	forward := fs.String("forward", "drop", "what the XDP program does with netconsole packets once handled: drop or pass")
	fs.IntVar(&c.contextLines, "context-lines", loader.DefaultContextLines, "lines of a source still forwarded after the end marker (\"---[ end\") of a report that matched; a burst forwards at most 256 lines after a match (0: no bursts)")
	fs.StringVar(&c.pinPath, "pin-path", "", "bpffs directory to pin the program's maps and links in, so a restart loses nothing")
	fs.StringVar(&c.kubeconfig, "kubeconfig", "", "kubeconfig file (default: in-cluster config; neither: report-only)")
	fs.BoolVar(&c.reportOnlyArg, "report-only", false, "never write to the cluster, even with a kubeconfig")
	fs.BoolVar(&c.dryRun, "dry-run", false, "compute and log every cluster action, write nothing but the KernelCrash records (outcome \"dry run: ...\")")
	podAction := fs.String("pod-action", string(cleanup.PodsFailAndDelete), "what a fatal incident does to the node's pods: fail-and-delete, fail (left for pod GC) or none")
	fs.BoolVar(&c.keepNode, "keep-node", false, "annotate a dead node and record its Event, but do not delete it")
	fs.BoolVar(&c.taintNonFatal, "taint-non-fatal", false, "taint a node whose kernel reported a problem and lives on (lastgasp.io/kernel-oops:NoSchedule), beside its annotations and Event")
	confirm := fs.String("confirm", "tcp", "how a panic is confirmed before deletion: tcp (kubelet port silent, Lease stale) or none")
	fs.IntVar(&c.kubeletPort, "kubelet-port", liveness.DefaultPort, "port probed to confirm a node is dead")
	fs.Var(&allow, "allow", "source network(s) acted on, CIDR, comma-separated or repeated (default: any)")
	fs.IntVar(&c.maxDeletions, "max-node-deletions-per-minute", cleanup.DefaultMaxNodeDeletionsPerMinute, "cap on node cleanups a minute")
	fs.Float64Var(&c.qps, "kube-api-qps", cleanup.DefaultClientQPS, "API server requests a second (the Events have a quarter of it, on a limit of their own)")
	fs.IntVar(&c.burst, "kube-api-burst", cleanup.DefaultClientBurst, "API server request burst (the Events: half of it, their own)")
	fs.StringVar(&c.logFormat, "log-format", "json", "log format: json or text")
	fs.StringVar(&c.metricsAddr, "metrics-addr", "", "address to serve /metrics, /healthz and /readyz on (e.g. :9466; default off)")
	fs.StringVar(&c.feedAddr, "feed-addr", "127.0.0.1:9467", "address to serve /feed on, for lastgasp tail: every forwarded kernel line, unauthenticated, so keep it on loopback (\"\": off)")
	fs.StringVar(&c.journalDir, "journal", "", "directory of the incident journal: incidents are kept there until finished, and resumed after a crash (default: none)")
	fs.StringVar(&c.patternsFile, "patterns", "", "patterns file (YAML: replace, patterns[{prefix, kind, confirm}]), reloaded on SIGHUP or when it changes (default: the built-in table)")
	fs.DurationVar(&c.shutdownGrace, "shutdown-grace", 20*time.Second, "on SIGTERM, how long to let cleanups in flight finish (the rest stay in the journal)")
	fs.BoolVar(&c.backstop, "backstop", true, "xdp mode with --forward drop: also read the netconsole port(s) with a socket, which gets the lines the program passes up (ring buffer full, IP fragments)")
	ringBytes := fs.Uint("ring-buffer-bytes", loader.DefaultRingBufSize, "size of the XDP program's ring buffer: a power of two, at least 4096 (a pinned ring buffer keeps the size it was made with)")
	socketBuffer := fs.String("socket-buffer", resource.NewQuantity(udpreceiver.DefaultReadBuffer, resource.BinarySI).String(), "receive buffer of each UDP socket (socket mode, or xdp mode's backstop), a quantity from 4Ki to 1Gi: forced past net.core.rmem_max where the process may (CAP_NET_ADMIN); the sockets read it in batches of up to 512 datagrams (recvmmsg)")
	memoryBudget := fs.String("memory-budget", resource.NewQuantity(detect.DefaultMemoryBudget, resource.BinarySI).String(), "memory that decoding and assembling incidents may hold (a quantity: 128Mi), below GOMEMLIMIT with room for the cluster caches; a flood of forged lines is dropped and counted past it")
	fs.DurationVar(&c.safety.UndecidedFor, "undecided-for", cleanup.DefaultUndecidedFor, "how long a panic whose node can be proved neither dead nor alive (no Lease, a probe that cannot be sent) is tried again before it is finished as unconfirmed, nothing deleted")
	fs.DurationVar(&c.safety.ForgeryBackoff, "forgery-backoff", cleanup.DefaultForgeryBackoff, "after a panic refused because its node is alive, how long further panics of that node wait; doubles with each refusal")
	fs.DurationVar(&c.safety.ForgeryBackoffMax, "forgery-backoff-max", cleanup.DefaultForgeryBackoffMax, "the most --forgery-backoff grows to")
	nodeSelector := fs.String("node-selector", cleanup.DefaultNodeSelector, "label selector of the nodes a panic may end (default: all but control-plane nodes)")
	fs.Float64Var(&c.safety.MaxEndedShare, "max-ended-share", cleanup.DefaultMaxEndedShare, "share brake: no node is ended while more than this share of the cluster's nodes were ended within --share-window (1: off)")
	fs.DurationVar(&c.safety.ShareWindow, "share-window", cleanup.DefaultShareWindow, "the share brake's window")
	brakeLease := fs.String("brake-lease", "", "NAMESPACE/NAME of the Lease that keeps the deletion cap and share brake for all collectors and across restarts (default: this process's own)")
	fs.DurationVar(&c.historyRetention, "history-retention", crashrecord.DefaultRetention, "how long the KernelCrash records (lastgasp history) are kept after their crash")
	fs.IntVar(&c.stormNodes, "storm-nodes", storm.DefaultNodes, "a storm: the same crash (signature) on more than this many nodes within --storm-window; then no more nodes of it are ended")
	fs.DurationVar(&c.stormWindow, "storm-window", storm.DefaultWindow, "the storm's window")
	configFile := fs.String("config", "", "config file (YAML): keys are these flags' names; the command line wins")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprintf(stderr, "usage: lastgasp run [flags]\n\nThe collector: netconsole lines in, incidents out, dead nodes cleaned up.\n\nflags:\n")
			fs.SetOutput(stderr)
			fs.PrintDefaults()
		}
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if *configFile != "" {
		if err := applyConfigFile(fs, *configFile); err != nil {
			return c, err
		}
	}
	c.interfaces, c.ports = ifaces, ports.ports
	var err error
	switch {
	case c.mode != "xdp" && c.mode != "socket":
		return c, fmt.Errorf("--mode %q: want xdp or socket", c.mode)
	case c.mode == "xdp" && len(c.interfaces) == 0:
		return c, errors.New("--mode xdp needs --interface")
	case *forward != "drop" && *forward != "pass":
		return c, fmt.Errorf("--forward %q: want drop or pass", *forward)
	case *confirm != "tcp" && *confirm != "none":
		return c, fmt.Errorf("--confirm %q: want tcp or none", *confirm)
	case c.contextLines < 0:
		return c, fmt.Errorf("--context-lines %d: must be 0 or more", c.contextLines)
	case c.logFormat != "json" && c.logFormat != "text":
		return c, fmt.Errorf("--log-format %q: want json or text", c.logFormat)
	case c.qps <= 0 || c.burst <= 0 || c.maxDeletions <= 0:
		return c, errors.New("--kube-api-qps, --kube-api-burst and --max-node-deletions-per-minute must be positive")
	case c.kubeletPort <= 0 || c.kubeletPort > 65535:
		return c, fmt.Errorf("--kubelet-port %d: not a port", c.kubeletPort)
	case *ringBytes < 4096 || *ringBytes > 1<<30 || *ringBytes&(*ringBytes-1) != 0:
		return c, fmt.Errorf("--ring-buffer-bytes %d: want a power of two from 4096 to 1 GiB", *ringBytes)
	case c.shutdownGrace < 0:
		return c, fmt.Errorf("--shutdown-grace %v: must not be negative", c.shutdownGrace)
	case c.safety.UndecidedFor <= 0 || c.safety.ForgeryBackoff <= 0 || c.safety.ForgeryBackoffMax < c.safety.ForgeryBackoff || c.safety.ShareWindow <= 0:
		return c, errors.New("--undecided-for, --forgery-backoff, --forgery-backoff-max (at least --forgery-backoff) and --share-window must be positive")
	case c.stormNodes <= 0 || c.stormWindow <= 0:
		return c, errors.New("--storm-nodes and --storm-window must be positive")
	case c.historyRetention <= 0:
		return c, fmt.Errorf("--history-retention %v: must be positive", c.historyRetention)
	case c.safety.MaxEndedShare <= 0:
		return c, fmt.Errorf("--max-ended-share %v: must be positive", c.safety.MaxEndedShare)
	}
	if c.safety.NodeSelector, err = labels.Parse(*nodeSelector); err != nil {
		return c, fmt.Errorf("--node-selector %q: %w", *nodeSelector, err)
	}
	if *brakeLease != "" {
		ns, name, ok := strings.Cut(*brakeLease, "/")
		if !ok || ns == "" || name == "" {
			return c, fmt.Errorf("--brake-lease %q: want NAMESPACE/NAME", *brakeLease)
		}
		c.safety.BrakeLeaseNamespace, c.safety.BrakeLeaseName = ns, name
	}
	c.patterns = pattern.Default()
	if c.patternsFile != "" {
		if c.patterns, c.patternsData, err = pattern.LoadFile(c.patternsFile); err != nil {
			return c, err
		}
	}
	if c.xdpMode, err = loader.ParseXDPMode(*xdpMode); err != nil {
		return c, err
	}
	if c.podAction, err = cleanup.ParsePodAction(*podAction); err != nil {
		return c, err
	}
	if net.ParseIP(c.listen) == nil {
		return c, fmt.Errorf("--listen %q: not an IP address", c.listen)
	}
	for _, s := range allow {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return c, fmt.Errorf("--allow %q: %w", s, err)
		}
		c.allowed = append(c.allowed, p.Masked())
	}
	q, err := resource.ParseQuantity(*memoryBudget)
	if err != nil || q.Value() < 8<<20 || q.Value() > 1<<40 {
		return c, fmt.Errorf("--memory-budget %q: want a quantity from 8Mi to 1Ti", *memoryBudget)
	}
	c.memoryBudget = int(q.Value())
	q, err = resource.ParseQuantity(*socketBuffer)
	if err != nil || q.Value() < 4<<10 || q.Value() > 1<<30 {
		return c, fmt.Errorf("--socket-buffer %q: want a quantity from 4Ki to 1Gi", *socketBuffer)
	}
	c.socketBuffer = int(q.Value())
	c.forwardPass, c.confirm = *forward == "pass", *confirm == "tcp"
	c.ringBytes = uint32(*ringBytes)
	return c, nil
}

// runCmd runs "lastgasp run": the collector.
func runCmd(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	c, err := parseRun(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	if err != nil {
		fmt.Fprintf(stderr, "lastgasp run: %v\n", err)
		return exitUsage
	}
	var handler slog.Handler = slog.NewJSONHandler(stdout, nil)
	if c.logFormat == "text" {
		handler = slog.NewTextHandler(stdout, nil)
	}
	log := slog.New(handler)
	if err := serve(ctx, c, log); err != nil {
		log.Error("lastgasp run failed", "error", err)
		return exitError
	}
	return exitOK
}

// stringList is a flag of strings, comma-separated or repeated.
type stringList []string

func (s *stringList) String() string { return strings.Join(*s, ",") }

func (s *stringList) Set(v string) error {
	for _, f := range strings.Split(v, ",") {
		if f = strings.TrimSpace(f); f != "" {
			*s = append(*s, f)
		}
	}
	return nil
}
