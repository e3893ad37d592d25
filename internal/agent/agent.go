// Package agent is "lastgasp agent", the DaemonSet loop that keeps every
// node's netconsole pointed at the collectors: it watches the
// EndpointSlices of the collector Service, chooses two collectors for its
// node by rendezvous hashing of the node name (so that nodes spread over
// the collectors, every panic reaches two of them, and a collector that
// comes or goes moves only the nodes that chose it), configures netconsole
// for them (netconsolesetup), writes the source address netconsole sends
// from to the Node's lastgasp.io/netconsole-source annotation (the
// collector's node lookup reads it), and records an Event on the Node when
// netconsole cannot be set up.
package agent

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/lastgasp/lastgasp/internal/netconsolesetup"
	"github.com/lastgasp/lastgasp/internal/nodeindex"
)

// Defaults for a Config's zero fields.
const (
	DefaultCollectors = 2
	DefaultResync     = time.Minute
)

// FailureReason is the reason of the Event recorded on the Node when
// netconsole cannot be set up.
const FailureReason = "NetconsoleSetupFailed"

// Config is what the agent needs.
type Config struct {
	// Client talks to the API server.
	Client kubernetes.Interface
	// NodeName is this node's Node.
	NodeName string
	// Namespace and Service name the collector Service: its
	// EndpointSlices' ready addresses are the collectors.
	Namespace, Service string
	// Port is the collectors' netconsole port. Default
	// netconsolesetup.DefaultPort.
	Port int
	// Collectors is how many collectors each node sends to. Default 2.
	Collectors int
	// Dir is netconsole's configfs directory. Default
	// netconsolesetup.DefaultDir.
	Dir string
	// Resync is how often the setup is redone with no change seen (a
	// route or a neighbour's MAC may have changed). Default 1 minute.
	Resync time.Duration
	// Log receives what the agent does. Default slog.Default().
	Log *slog.Logger
}

// Stats are the agent's counters and state, read by its metrics.
type Stats struct {
	// Setups counts setups run, Failures those that failed.
	Setups, Failures atomic.Uint64
	// Changes counts targets created, rewritten or removed.
	Changes atomic.Uint64
	// OK is 1 when the last setup succeeded, 0 when it failed, -1
	// before the first.
	OK atomic.Int64
	// Targets is how many targets the last setup left configured.
	Targets atomic.Int64
	// Synced is set once the EndpointSlice cache has synced.
	Synced atomic.Bool
}

// Agent is one node's loop.
type Agent struct {
	cfg     Config
	stats   Stats
	lastErr string
}

// New returns an agent for cfg, defaults filled in.
func New(cfg Config) (*Agent, error) {
	if cfg.Client == nil || cfg.NodeName == "" || cfg.Namespace == "" || cfg.Service == "" {
		return nil, errors.New("agent: a client, a node name and the collector Service's namespace and name are needed")
	}
	cfg.Port = cmp.Or(cfg.Port, netconsolesetup.DefaultPort)
	cfg.Collectors = cmp.Or(cfg.Collectors, DefaultCollectors)
	cfg.Dir = cmp.Or(cfg.Dir, netconsolesetup.DefaultDir)
	cfg.Resync = cmp.Or(cfg.Resync, DefaultResync)
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	a := &Agent{cfg: cfg}
	a.stats.OK.Store(-1)
	return a, nil
}

// Stats returns the agent's counters.
func (a *Agent) Stats() *Stats { return &a.stats }

// Run watches the collector Service's EndpointSlices and sets netconsole
// up at each change and every Resync, until ctx ends.
func (a *Agent) Run(ctx context.Context) error {
	factory := informers.NewSharedInformerFactoryWithOptions(a.cfg.Client, 0,
		informers.WithNamespace(a.cfg.Namespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.LabelSelector = discoveryv1.LabelServiceName + "=" + a.cfg.Service
		}))
	eps := factory.Discovery().V1().EndpointSlices()
	changed := make(chan struct{}, 1)
	poke := func(any) {
		select {
		case changed <- struct{}{}:
		default:
		}
	}
	if _, err := eps.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    poke,
		UpdateFunc: func(_, o any) { poke(o) },
		DeleteFunc: poke,
	}); err != nil {
		return fmt.Errorf("agent: watch EndpointSlices: %w", err)
	}
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), eps.Informer().HasSynced) {
		return ctx.Err()
	}
	a.stats.Synced.Store(true)
	a.cfg.Log.Info("lastgasp agent watching", "node", a.cfg.NodeName, "service", a.cfg.Namespace+"/"+a.cfg.Service)
	tick := time.NewTicker(a.cfg.Resync)
	defer tick.Stop()
	for {
		list, err := eps.Lister().EndpointSlices(a.cfg.Namespace).List(labels.Everything())
		if err != nil {
			return fmt.Errorf("agent: list EndpointSlices: %w", err)
		}
		a.setup(ctx, Addresses(list))
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		case <-tick.C:
		}
	}
}

// Addresses returns the ready endpoints' addresses of slices, sorted,
// each once.
func Addresses(list []*discoveryv1.EndpointSlice) []netip.Addr {
	var out []netip.Addr
	for _, s := range list {
		for _, e := range s.Endpoints {
			if e.Conditions.Ready != nil && !*e.Conditions.Ready {
				continue
			}
			for _, s := range e.Addresses {
				if a, err := netip.ParseAddr(s); err == nil {
					out = append(out, a.Unmap())
				}
			}
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return slices.Compact(out)
}

// Choose returns the n collectors of addrs node sends to: those with the
// highest rendezvous score, SHA-256 of the node name and the address, in
// score order. Each node's choice is its own: a collector that comes or
// goes changes only the choice of nodes that rank it in their top n.
func Choose(node string, addrs []netip.Addr, n int) []netip.Addr {
	score := func(a netip.Addr) uint64 {
		h := sha256.Sum256([]byte(node + "\x00" + a.String()))
		return binary.BigEndian.Uint64(h[:8])
	}
	out := slices.Clone(addrs)
	slices.SortFunc(out, func(x, y netip.Addr) int { return cmp.Compare(score(y), score(x)) })
	return out[:min(n, len(out))]
}

// setup configures netconsole for the chosen collectors and reports the
// outcome to the cluster.
func (a *Agent) setup(ctx context.Context, addrs []netip.Addr) {
	a.stats.Setups.Add(1)
	chosen := Choose(a.cfg.NodeName, addrs, a.cfg.Collectors)
	var res netconsolesetup.Result
	err := fmt.Errorf("no ready collector in the EndpointSlices of Service %s/%s", a.cfg.Namespace, a.cfg.Service)
	if len(chosen) > 0 {
		res, err = netconsolesetup.Configure(ctx, netconsolesetup.Options{
			Collectors: chosen, Port: a.cfg.Port, NodeName: a.cfg.NodeName, Dir: a.cfg.Dir,
		})
	}
	for _, c := range res.Changes {
		if c.Action != netconsolesetup.Unchanged {
			a.stats.Changes.Add(1)
			a.cfg.Log.Info("netconsole target "+string(c.Action), "target", c.Name)
		}
	}
	a.stats.Targets.Store(int64(len(res.Targets)))
	if err != nil {
		a.stats.Failures.Add(1)
		a.stats.OK.Store(0)
		msg := strings.ReplaceAll(err.Error(), "\n", "; ")
		if msg != a.lastErr {
			a.cfg.Log.Warn("netconsole setup failed", "error", msg)
			a.event(ctx, msg)
		}
		a.lastErr = msg
	} else {
		a.stats.OK.Store(1)
		a.lastErr = ""
	}
	if srcs := res.Sources(); len(srcs) > 0 {
		if err := a.annotate(ctx, srcs); err != nil {
			a.cfg.Log.Warn("node not annotated", "error", err)
		}
	}
}

// annotate writes the netconsole source addresses to the Node's
// nodeindex.SourceAnnotation, if it does not say them already.
func (a *Agent) annotate(ctx context.Context, srcs []netip.Addr) error {
	var parts []string
	for _, s := range srcs {
		parts = append(parts, s.String())
	}
	value := strings.Join(parts, ",")
	node, err := a.cfg.Client.CoreV1().Nodes().Get(ctx, a.cfg.NodeName, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("get node %s: %w", a.cfg.NodeName, err)
	}
	if node.Annotations[nodeindex.SourceAnnotation] == value {
		return nil
	}
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]string{nodeindex.SourceAnnotation: value}}})
	if _, err := a.cfg.Client.CoreV1().Nodes().Patch(ctx, a.cfg.NodeName, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		return fmt.Errorf("annotate node %s: %w", a.cfg.NodeName, err)
	}
	a.cfg.Log.Info("node annotated", "annotation", nodeindex.SourceAnnotation, "value", value)
	return nil
}

// event records a Warning Event on the Node. Its name is derived from the
// node and the message, so a failure repeated is one Event (the agent
// needs no right to update Events, only to create them).
func (a *Agent) event(ctx context.Context, msg string) {
	node, err := a.cfg.Client.CoreV1().Nodes().Get(ctx, a.cfg.NodeName, metav1.GetOptions{})
	if err != nil {
		a.cfg.Log.Warn("event not recorded", "error", err)
		return
	}
	h := sha256.Sum256([]byte(msg))
	now := metav1.NewTime(time.Now())
	ev := &corev1.Event{
		ObjectMeta: metav1.ObjectMeta{
			Name:      "lastgasp-netconsole-" + node.Name + "-" + hex.EncodeToString(h[:6]),
			Namespace: metav1.NamespaceDefault, // where a Node's Events go
		},
		InvolvedObject:      corev1.ObjectReference{Kind: "Node", APIVersion: "v1", Name: node.Name, UID: node.UID},
		Reason:              FailureReason,
		Message:             msg,
		Type:                corev1.EventTypeWarning,
		Source:              corev1.EventSource{Component: "lastgasp-agent", Host: node.Name},
		FirstTimestamp:      now,
		LastTimestamp:       now,
		Count:               1,
		ReportingController: "lastgasp.io/agent",
		ReportingInstance:   node.Name,
	}
	if _, err := a.cfg.Client.CoreV1().Events(ev.Namespace).Create(ctx, ev, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		a.cfg.Log.Warn("event not recorded", "reason", FailureReason, "error", err)
	}
}
