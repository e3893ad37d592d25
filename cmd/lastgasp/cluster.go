package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/lastgasp/lastgasp/internal/cleanup"
	"github.com/lastgasp/lastgasp/internal/detect"
	"github.com/lastgasp/lastgasp/internal/liveness"
	"github.com/lastgasp/lastgasp/internal/logagg"
	"github.com/lastgasp/lastgasp/internal/nodeindex"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// cluster is the cleanup controller and what it needs.
type cluster struct {
	ctrl    *cleanup.Controller
	index   *nodeindex.Index
	factory informers.SharedInformerFactory
}

// run starts the informers and the controller, until ctx is done.
func (cl *cluster) run(ctx context.Context, log *slog.Logger) {
	cl.factory.Start(ctx.Done())
	defer cl.factory.Shutdown()
	if err := cl.ctrl.Run(ctx, 4); err != nil && !errors.Is(err, context.Canceled) {
		log.Error("cleanup controller stopped", "error", err)
	}
}

// clusterSide builds the cleanup controller, which calls done for each
// incident it finishes with, or returns nil for report-only: no
// kubeconfig and not in a cluster, or asked.
func clusterSide(c runConfig, log *slog.Logger, flood *logagg.Aggregator, done func(detect.Incident, cleanup.Outcome, string, time.Time)) (*cluster, error) {
	if c.reportOnlyArg {
		log.Info("report-only (--report-only): incidents are logged, nothing is written to a cluster")
		return nil, nil
	}
	var cfg *rest.Config
	var err error
	if c.kubeconfig != "" {
		cfg, err = clientcmd.BuildConfigFromFlags("", c.kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("kubeconfig %s: %w", c.kubeconfig, err)
		}
	} else if cfg, err = rest.InClusterConfig(); err != nil {
		log.Info("report-only: no --kubeconfig and not running in a cluster; incidents are logged, nothing is written")
		return nil, nil
	}
	cfg.QPS, cfg.Burst = float32(c.qps), c.burst
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	cl := &cluster{factory: informers.NewSharedInformerFactory(cs, 0)}
	if cl.index, err = nodeindex.New(cl.factory); err != nil {
		return nil, err
	}
	var prober *liveness.Prober
	if c.confirm {
		prober = &liveness.Prober{Client: cs, Port: c.kubeletPort}
	} else {
		log.Warn("--confirm=none: a forged panic line can delete a live node")
	}
	host, _ := os.Hostname()
	cl.ctrl = cleanup.New(cleanup.Config{
		Client: cs, Index: cl.index, Prober: prober, Safety: c.safety,
		AllowedSources: c.allowed, MaxNodeDeletionsPerMinute: c.maxDeletions,
		DryRun: c.dryRun, Instance: host, Logger: log, Aggregate: flood,
		PodAction: c.podAction, KeepNode: c.keepNode, TaintNonFatal: c.taintNonFatal,
		OnDone: done,
	})
	return cl, nil
}
