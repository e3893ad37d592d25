package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/lastgasp/lastgasp/internal/cleanup"
	"github.com/lastgasp/lastgasp/internal/crashrecord"
	"github.com/lastgasp/lastgasp/internal/detect"
	"github.com/lastgasp/lastgasp/internal/liveness"
	"github.com/lastgasp/lastgasp/internal/logagg"
	"github.com/lastgasp/lastgasp/internal/nodeindex"
	"github.com/lastgasp/lastgasp/internal/storm"
)

// cluster is the cleanup controller and what it needs.
type cluster struct {
	ctrl    *cleanup.Controller
	index   *nodeindex.Index
	factory informers.SharedInformerFactory
	client  kubernetes.Interface
	prober  *liveness.Prober // nil: --confirm=none
	// records writes and prunes the KernelCrash records (nil: the CRD
	// is not installed).
	records   *crashrecord.Recorder
	retention time.Duration
	// reach is the last check of the probe's reach: 1 a live node's
	// kubelet answered, 0 none did, -1 not checked (yet).
	reach atomic.Int32
}

// run starts the informers and the controller, until ctx is done.
func (cl *cluster) run(ctx context.Context, log *slog.Logger) {
	cl.factory.Start(ctx.Done())
	defer cl.factory.Shutdown()
	go cl.checkReach(ctx, log)
	if cl.records != nil {
		go cl.records.Prune(ctx, cl.retention)
	}
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
	// The Events go on a rate limit of their own, off the path of the
	// next node's end.
	events, err := kubernetes.NewForConfig(cleanup.EventClientConfig(cfg))
	if err != nil {
		return nil, fmt.Errorf("kubernetes client for Events: %w", err)
	}
	cl := &cluster{factory: informers.NewSharedInformerFactory(cs, 0), client: cs}
	cl.reach.Store(-1)
	if cl.index, err = nodeindex.New(cl.factory); err != nil {
		return nil, err
	}
	var prober *liveness.Prober
	if c.confirm {
		prober = &liveness.Prober{Client: cs, Port: c.kubeletPort}
		cl.prober = prober
	} else {
		log.Warn("--confirm=none: a forged panic line can delete a live node")
	}
	host, _ := os.Hostname()
	var record func(context.Context, cleanup.Finished) error
	if cl.records, err = recorder(cfg, c, host, log); err != nil {
		return nil, err
	}
	stormCfg := storm.Config{Nodes: c.stormNodes, Window: c.stormWindow, Logger: log, Instance: host}
	if !c.dryRun {
		stormCfg.Events = events
	}
	if cl.records != nil {
		record, cl.retention = cl.records.Record, c.historyRetention
		stormCfg.Store = cl.records.Store
	}
	storms := storm.New(stormCfg)
	cl.ctrl = cleanup.New(cleanup.Config{
		Client: cs, EventClient: events, Index: cl.index, Prober: prober, Safety: c.safety,
		AllowedSources: c.allowed, MaxNodeDeletionsPerMinute: c.maxDeletions,
		DryRun: c.dryRun, Instance: host, Logger: log, Aggregate: flood,
		PodAction: c.podAction, KeepNode: c.keepNode, TaintNonFatal: c.taintNonFatal,
		OnDone: done, Record: record, Hold: storms.Hold,
	})
	return cl, nil
}

// recorder returns what writes the KernelCrash records, or nil when they
// cannot be written: the CRD not installed (said once). A dry run writes
// them too, the one thing it writes: its outcomes are "dry run: ...".
func recorder(cfg *rest.Config, c runConfig, host string, log *slog.Logger) (*crashrecord.Recorder, error) {
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("discovery client: %w", err)
	}
	if _, err := dc.ServerResourcesForGroupVersion(crashrecord.APIVersion); err != nil {
		log.Warn("no KernelCrash records: the CRD is not served (kubectl apply -f deploy/kernelcrash-crd.yaml)", "error", err)
		return nil, nil
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("dynamic client: %w", err)
	}
	return &crashrecord.Recorder{Store: crashrecord.NewStore(dyn), Instance: host, Logger: log}, nil
}

// Checking the probe's reach: every reachEvery, up to reachSample nodes
// believed alive (Ready, their Leases renewed within their duration) have
// their kubelet ports probed once.
const (
	reachEvery  = 5 * time.Minute
	reachSample = 3
)

// checkReach tells, now and then, whether the probe can reach live
// nodes' kubelets from here: if none of those sampled answers, a dead
// node's silence proves nothing from this collector (a firewall that
// drops, a security group, another segment), and confirmation rests on
// the Lease alone. lastgasp_kubelet_probe_reach and a warning say so.
func (cl *cluster) checkReach(ctx context.Context, log *slog.Logger) {
	if cl.prober == nil || cl.index.WaitForSync(ctx) != nil {
		return
	}
	check := func() bool {
		nodes := cl.liveSample(ctx)
		if len(nodes) == 0 {
			return false // nothing to judge by
		}
		if cl.prober.Reach(ctx, nodes) > 0 {
			cl.reach.Store(1)
			return false
		}
		cl.reach.Store(0)
		log.Warn("the kubelet probe reaches none of the live nodes sampled: a dead node's silence proves nothing from here, so confirmation rests on its Lease alone; open TCP to the kubelet port (10250) from the collectors' nodes",
			"sampled", len(nodes))
		return false
	}
	check()
	every(ctx, reachEvery, check)
}

// liveSample returns up to reachSample nodes that look alive: Ready, and
// their Leases renewed within their duration (by the kubelet's clock:
// good enough to choose whom to probe).
func (cl *cluster) liveSample(ctx context.Context) []*corev1.Node {
	names, err := cl.index.NodeNames()
	if err != nil {
		return nil
	}
	rand.Shuffle(len(names), func(i, j int) { names[i], names[j] = names[j], names[i] })
	var sample []*corev1.Node
	for _, name := range names {
		if len(sample) == reachSample {
			break
		}
		node, err := cl.index.Node(name)
		if err != nil || node == nil || !ready(node) {
			continue
		}
		lease, err := cl.client.CoordinationV1().Leases(corev1.NamespaceNodeLease).Get(ctx, name, metav1.GetOptions{})
		if err != nil || lease.Spec.RenewTime == nil || lease.Spec.LeaseDurationSeconds == nil ||
			time.Since(lease.Spec.RenewTime.Time) > time.Duration(*lease.Spec.LeaseDurationSeconds)*time.Second {
			continue
		}
		sample = append(sample, node)
	}
	return sample
}

// ready reports whether the node's Ready condition is True.
func ready(node *corev1.Node) bool {
	for _, c := range node.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}
