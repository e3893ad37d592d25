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
	"os"
	"strings"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/lastgasp/lastgasp/internal/agent"
	"github.com/lastgasp/lastgasp/internal/metrics"
	"github.com/lastgasp/lastgasp/internal/netconsolesetup"
)

// agentCmd runs "lastgasp agent": on every node (a DaemonSet), keeps
// netconsole pointed at two of the collectors the collector Service's
// EndpointSlices name, until SIGTERM.
func agentCmd(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("agent", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig file (default: the in-cluster ServiceAccount)")
	nodeName := fs.String("node-name", os.Getenv("NODE_NAME"), "this node's Node name (default $NODE_NAME)")
	service := fs.String("service", "lastgasp/lastgasp-collector", "the collector Service, NAMESPACE/NAME: its EndpointSlices' ready addresses are the collectors")
	port := fs.Int("port", netconsolesetup.DefaultPort, "the collectors' netconsole UDP port")
	collectors := fs.Int("collectors", agent.DefaultCollectors, "collectors each node sends to")
	dir := fs.String("configfs", netconsolesetup.DefaultDir, "netconsole's configfs directory")
	resync := fs.Duration("resync", agent.DefaultResync, "how often to redo the setup with no change seen (routes, MACs)")
	metricsAddr := fs.String("metrics-addr", "", "address to serve /metrics, /healthz and /readyz on (e.g. :9468; default off)")
	logFormat := fs.String("log-format", "json", "log format: json or text")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprintf(stderr, "usage: lastgasp agent --node-name NODE [flags]\n\n"+
				"Keeps this node's netconsole pointed at two collectors of the collector\n"+
				"Service, annotates the Node with netconsole's source address, and records\n"+
				"an Event on the Node when netconsole cannot be set up.\n\nflags:\n")
			fs.SetOutput(stderr)
			fs.PrintDefaults()
			return exitOK
		}
		fmt.Fprintf(stderr, "lastgasp agent: %v\n", err)
		return exitUsage
	}
	ns, name, ok := strings.Cut(*service, "/")
	ok = ok && ns != "" && name != ""
	switch {
	case fs.NArg() > 0:
		fmt.Fprintf(stderr, "lastgasp agent: unexpected argument %q\n", fs.Arg(0))
		return exitUsage
	case *nodeName == "":
		fmt.Fprintln(stderr, "lastgasp agent: no --node-name (nor $NODE_NAME)")
		return exitUsage
	case !ok:
		fmt.Fprintf(stderr, "lastgasp agent: --service %q: want NAMESPACE/NAME\n", *service)
		return exitUsage
	case *logFormat != "json" && *logFormat != "text":
		fmt.Fprintf(stderr, "lastgasp agent: --log-format %q: want json or text\n", *logFormat)
		return exitUsage
	}
	var handler slog.Handler = slog.NewJSONHandler(stdout, nil)
	if *logFormat == "text" {
		handler = slog.NewTextHandler(stdout, nil)
	}
	log := slog.New(handler)

	var cfg *rest.Config
	var err error
	if *kubeconfig != "" {
		cfg, err = clientcmd.BuildConfigFromFlags("", *kubeconfig)
	} else {
		cfg, err = rest.InClusterConfig()
	}
	if err != nil {
		fmt.Fprintf(stderr, "lastgasp agent: kubeconfig: %v\n", err)
		return exitError
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		fmt.Fprintf(stderr, "lastgasp agent: kubernetes client: %v\n", err)
		return exitError
	}
	a, err := agent.New(agent.Config{
		Client: cs, NodeName: *nodeName, Namespace: ns, Service: name,
		Port: *port, Collectors: *collectors, Dir: *dir, Resync: *resync, Log: log,
	})
	if err != nil {
		fmt.Fprintf(stderr, "lastgasp agent: %v\n", err)
		return exitUsage
	}
	if *metricsAddr != "" {
		ln, err := net.Listen("tcp", *metricsAddr)
		if err != nil {
			fmt.Fprintf(stderr, "lastgasp agent: metrics: %v\n", err)
			return exitError
		}
		srv := &http.Server{Handler: metrics.NewAgent(a.Stats()).Handler(), ReadHeaderTimeout: 5 * time.Second}
		go srv.Serve(ln)
		defer srv.Close()
		log.Info("serving metrics", "addr", ln.Addr().String())
	}
	if err := a.Run(ctx); err != nil {
		fmt.Fprintf(stderr, "lastgasp agent: %s\n", errorLine(err))
		return exitError
	}
	return exitOK
}
