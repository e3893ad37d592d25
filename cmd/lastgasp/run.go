package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/lastgasp/lastgasp/cleanup"
	"github.com/lastgasp/lastgasp/collector"
	"github.com/lastgasp/lastgasp/detect"
	"github.com/lastgasp/lastgasp/filter"
	"github.com/lastgasp/lastgasp/liveness"
	"github.com/lastgasp/lastgasp/loader"
	"github.com/lastgasp/lastgasp/metrics"
	"github.com/lastgasp/lastgasp/netconsole"
	"github.com/lastgasp/lastgasp/nodeindex"
	"github.com/lastgasp/lastgasp/pattern"
	"github.com/lastgasp/lastgasp/ringbuf"
	"github.com/lastgasp/lastgasp/udpreceiver"
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
	metricsAddr   string
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
	fs.StringVar(&c.listen, "listen", "::", "address the socket data path listens on (socket mode)")
	xdpMode := fs.String("xdp-mode", "auto", "XDP attach mode: native, generic or auto (native, falling back to generic)")
	forward := fs.String("forward", "drop", "what the XDP program does with netconsole packets once handled: drop or pass")
	fs.IntVar(&c.contextLines, "context-lines", loader.DefaultContextLines, "lines forwarded after a match from the same source (0: none)")
	fs.StringVar(&c.pinPath, "pin-path", "", "bpffs directory to pin the program's maps and links in, so a restart loses nothing")
	fs.StringVar(&c.kubeconfig, "kubeconfig", "", "kubeconfig file (default: in-cluster config; neither: report-only)")
	fs.BoolVar(&c.reportOnlyArg, "report-only", false, "never write to the cluster, even with a kubeconfig")
	fs.BoolVar(&c.dryRun, "dry-run", false, "compute and log every cluster action, write nothing")
	podAction := fs.String("pod-action", string(cleanup.PodsFailAndDelete), "what a fatal incident does to the node's pods: fail-and-delete, fail (left for pod GC) or none")
	fs.BoolVar(&c.keepNode, "keep-node", false, "annotate a dead node and record its Event, but do not delete it")
	confirm := fs.String("confirm", "tcp", "how a panic is confirmed before deletion: tcp (kubelet port silent, Lease stale) or none")
	fs.IntVar(&c.kubeletPort, "kubelet-port", liveness.DefaultPort, "port probed to confirm a node is dead")
	fs.Var(&allow, "allow", "source network(s) acted on, CIDR, comma-separated or repeated (default: any)")
	fs.IntVar(&c.maxDeletions, "max-node-deletions-per-minute", cleanup.DefaultMaxNodeDeletionsPerMinute, "cap on node cleanups a minute")
	fs.Float64Var(&c.qps, "kube-api-qps", cleanup.DefaultClientQPS, "API server requests a second")
	fs.IntVar(&c.burst, "kube-api-burst", cleanup.DefaultClientBurst, "API server request burst")
	fs.StringVar(&c.logFormat, "log-format", "json", "log format: json or text")
	fs.StringVar(&c.metricsAddr, "metrics-addr", "", "address to serve /metrics, /healthz and /readyz on (e.g. :9466; default off)")
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
	c.forwardPass, c.confirm = *forward == "pass", *confirm == "tcp"
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

// serve sets up the data path and the cluster side, and runs until ctx is
// done.
func serve(ctx context.Context, c runConfig, log *slog.Logger) error {
	table := pattern.Default()
	var src metrics.Sources
	source, closeSource, err := dataPath(ctx, c, table, log, &src)
	if err != nil {
		return err
	}
	defer closeSource()

	sink, synced, err := clusterSide(ctx, c, log, &src)
	if err != nil {
		return err
	}

	var counters atomic.Pointer[assemblerCounters]
	counters.Store(&assemblerCounters{})
	src.Decoder = func() any { return counters.Load().decoder }
	src.Detector = func() any { return counters.Load().detector }
	m := metrics.New(src)
	if c.metricsAddr != "" {
		ln, err := net.Listen("tcp", c.metricsAddr)
		if err != nil {
			return fmt.Errorf("metrics: %w", err)
		}
		srv := &http.Server{Handler: m.Handler(), ReadHeaderTimeout: 5 * time.Second}
		go srv.Serve(ln)
		defer srv.Close()
		log.Info("serving metrics", "addr", ln.Addr().String())
	}
	go func() {
		// Ready once attached (done above) and the caches synced.
		if synced == nil || synced(ctx) {
			m.SetReady(true)
		}
	}()

	log.Info("lastgasp collecting", "mode", c.mode, "ports", c.ports, "interfaces", c.interfaces, "report_only", sink == nil, "dry_run", c.dryRun)
	return collector.Run(ctx, collector.Config{
		Source: source, Patterns: table, Sink: sink, Logger: log,
		Observe: m.Incident,
		Snapshot: func(d netconsole.Counters, t detect.Counters) {
			counters.Store(&assemblerCounters{decoder: d, detector: t})
		},
	})
}

// assemblerCounters is a snapshot the collector publishes for scrapes.
type assemblerCounters struct {
	decoder  netconsole.Counters
	detector detect.Counters
}

// dataPath loads and attaches the XDP program, or opens the sockets.
func dataPath(ctx context.Context, c runConfig, table *pattern.Table, log *slog.Logger, src *metrics.Sources) (collector.Source, func(), error) {
	if c.mode == "socket" {
		var sources collector.Sources
		var rxs []*udpreceiver.Receiver
		closeAll := func() {
			for _, rx := range rxs {
				rx.Close()
			}
		}
		for _, port := range c.ports {
			f := filter.New(filter.Config{Patterns: table, ContextLines: c.contextLines, NoContext: c.contextLines == 0})
			rx, err := udpreceiver.Listen(ctx, net.JoinHostPort(c.listen, strconv.Itoa(int(port))), 0, f)
			if err != nil {
				closeAll()
				return nil, nil, err
			}
			rxs = append(rxs, rx)
			sources = append(sources, rx)
		}
		return sources, closeAll, nil
	}
	prog, err := loader.Load(loader.Config{
		Ports:        c.ports,
		Patterns:     table,
		ContextLines: uint32(c.contextLines),
		NoContext:    c.contextLines == 0,
		ForwardPass:  c.forwardPass,
		PinPath:      c.pinPath,
		Logger:       log,
	})
	if err != nil {
		return nil, nil, err
	}
	for _, ifname := range c.interfaces {
		if _, err := prog.Attach(ifname, c.xdpMode); err != nil {
			prog.Close()
			return nil, nil, err
		}
	}
	rd, err := ringbuf.NewReader(prog.Events())
	if err != nil {
		prog.Close()
		return nil, nil, err
	}
	src.XDP = func() (any, error) { return prog.Counters() }
	src.RingMalformed = rd.Malformed
	return rd, func() { rd.Close(); prog.Close() }, nil
}

// clusterSide starts the cleanup controller and returns its Enqueue and a
// wait for its caches, or nil for report-only: no kubeconfig and not in a
// cluster, or asked.
func clusterSide(ctx context.Context, c runConfig, log *slog.Logger, src *metrics.Sources) (collector.Sink, func(context.Context) bool, error) {
	if c.reportOnlyArg {
		log.Info("report-only (--report-only): incidents are logged, nothing is written to a cluster")
		return nil, nil, nil
	}
	var cfg *rest.Config
	var err error
	if c.kubeconfig != "" {
		cfg, err = clientcmd.BuildConfigFromFlags("", c.kubeconfig)
		if err != nil {
			return nil, nil, fmt.Errorf("kubeconfig %s: %w", c.kubeconfig, err)
		}
	} else if cfg, err = rest.InClusterConfig(); err != nil {
		log.Info("report-only: no --kubeconfig and not running in a cluster; incidents are logged, nothing is written")
		return nil, nil, nil
	}
	cfg.QPS, cfg.Burst = float32(c.qps), c.burst
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("kubernetes client: %w", err)
	}
	factory := informers.NewSharedInformerFactory(cs, 0)
	index, err := nodeindex.New(factory)
	if err != nil {
		return nil, nil, err
	}
	var prober *liveness.Prober
	if c.confirm {
		prober = &liveness.Prober{Client: cs, Port: c.kubeletPort}
	} else {
		log.Warn("--confirm=none: a forged panic line can delete a live node")
	}
	host, _ := os.Hostname()
	ctrl := cleanup.New(cleanup.Config{
		Client: cs, Index: index, Prober: prober,
		AllowedSources: c.allowed, MaxNodeDeletionsPerMinute: c.maxDeletions,
		DryRun: c.dryRun, Instance: host, Logger: log,
		PodAction: c.podAction, KeepNode: c.keepNode,
	})
	factory.Start(ctx.Done())
	go func() {
		if err := ctrl.Run(ctx, 4); err != nil {
			log.Error("cleanup controller stopped", "error", err)
		}
	}()
	src.Cleanup = func() any { return ctrl.Stats() }
	return ctrl.Enqueue, func(ctx context.Context) bool { return index.WaitForSync(ctx) == nil }, nil
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
