// Package storm tells when one kernel crash strikes too many nodes at
// once: the same signature (package signature) on more than a set number
// of nodes within a window. That is a bad kernel or a bad workload
// spreading (a panic loop that moves its pods from node to node), not
// bad luck; ending node after node only feeds it. A storm is said once,
// loudly (an error logged, counted, an Event, the KernelCrash records
// marked), and
// the cleanup controller is told to end no more nodes of that signature
// (its Config.Hold) while it lasts.
//
// The nodes are counted from two places: what this collector was asked
// about (incidents in flight, not yet recorded) and the KernelCrash
// records (what every collector, and this one before a restart, ended).
package storm

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/lastgasp/lastgasp/internal/crashrecord"
	"github.com/lastgasp/lastgasp/internal/detect"
	"github.com/lastgasp/lastgasp/internal/signature"
)

// Defaults: more than 5 nodes within 30 minutes.
const (
	DefaultNodes  = 5
	DefaultWindow = 30 * time.Minute
)

// Config configures a Detector.
type Config struct {
	// Nodes is how many nodes one signature may strike within Window;
	// one more is a storm. Default DefaultNodes.
	Nodes int
	// Window is the storm's window. Default DefaultWindow.
	Window time.Duration
	// Store, if set, holds the KernelCrash records counted and marked.
	Store *crashrecord.Store
	// Events, if set, records the storm's Event (EventReasonStorm, in
	// "default", about the KernelCrash of the incident that tipped it),
	// named after the signature: one however many collectors see it,
	// until it expires.
	Events kubernetes.Interface
	// Instance names this collector in the Event.
	Instance string
	// Logger receives the storm's announcement. Default slog.Default().
	Logger *slog.Logger
}

// EventReasonStorm is the reason of a storm's Event.
const EventReasonStorm = "KernelCrashStorm"

// Detector counts the nodes each signature struck.
type Detector struct {
	cfg Config
	// Storms counts storms announced.
	Storms atomic.Uint64

	mu sync.Mutex
	// seen is when each signature was last asked about for each node.
	seen map[string]map[string]time.Time
	// announced is when each signature's storm was announced.
	announced map[string]time.Time
}

// New returns a Detector.
func New(cfg Config) *Detector {
	if cfg.Nodes <= 0 {
		cfg.Nodes = DefaultNodes
	}
	if cfg.Window <= 0 {
		cfg.Window = DefaultWindow
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Detector{cfg: cfg, seen: map[string]map[string]time.Time{}, announced: map[string]time.Time{}}
}

// Hold is cleanup.Config.Hold: the reason not to end node, when inc's
// signature struck more than Nodes nodes (node included) within Window;
// "" otherwise.
func (d *Detector) Hold(ctx context.Context, inc detect.Incident, node string) (string, error) {
	sig := signature.Of(inc)
	now := time.Now()
	nodes := d.note(sig.ID, node, now)
	if d.cfg.Store != nil {
		recorded, err := d.cfg.Store.List(ctx, crashrecord.LabelSignature+"="+sig.ID)
		if err != nil {
			return "", fmt.Errorf("storm: %w", err)
		}
		for _, kc := range recorded {
			if now.Sub(kc.Spec.LastTime.Time) <= d.cfg.Window {
				nodes[kc.Spec.Node.Name] = true
			}
		}
	}
	if len(nodes) <= d.cfg.Nodes {
		return "", nil
	}
	reason := fmt.Sprintf("storm: crash %s (%s) struck %d nodes within %s, more than %d; its records: kubectl get kernelcrashes -l %s=%s",
		sig.ID, sig.Title, len(nodes), d.cfg.Window, d.cfg.Nodes, crashrecord.LabelSignature, sig.ID)
	if d.announce(sig.ID, now) {
		d.Storms.Add(1)
		d.cfg.Logger.Error("kernel crash storm: the same crash on too many nodes; no more nodes of it are ended while it lasts",
			"signature", sig.ID, "title", sig.Title, "nodes", len(nodes), "window", d.cfg.Window.String(), "max_nodes", d.cfg.Nodes)
		d.mark(ctx, sig.ID)
		d.event(ctx, sig.ID, inc.ID, reason)
	}
	return reason, nil
}

// note remembers that sig struck node at now, forgets what is older
// than the window, and returns the nodes sig struck within it.
func (d *Detector) note(sig, node string, now time.Time) map[string]bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	for s, byNode := range d.seen {
		for n, at := range byNode {
			if now.Sub(at) > d.cfg.Window {
				delete(byNode, n)
			}
		}
		if len(byNode) == 0 {
			delete(d.seen, s)
		}
	}
	if d.seen[sig] == nil {
		d.seen[sig] = map[string]time.Time{}
	}
	d.seen[sig][node] = now
	nodes := map[string]bool{}
	for n := range d.seen[sig] {
		nodes[n] = true
	}
	return nodes
}

// announce reports whether sig's storm is news: not announced within
// the window.
func (d *Detector) announce(sig string, now time.Time) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if at, ok := d.announced[sig]; ok && now.Sub(at) <= d.cfg.Window {
		return false
	}
	d.announced[sig] = now
	return true
}

// event records the storm's Event (a failure is logged).
func (d *Detector) event(ctx context.Context, sig, incident, message string) {
	if d.cfg.Events == nil {
		return
	}
	now := metav1.NewTime(time.Now())
	ev := &corev1.Event{
		ObjectMeta:     metav1.ObjectMeta{Name: "lastgasp-storm-" + sig, Namespace: metav1.NamespaceDefault},
		InvolvedObject: corev1.ObjectReference{Kind: crashrecord.Kind, APIVersion: crashrecord.APIVersion, Name: incident},
		Reason:         EventReasonStorm, Message: message, Type: corev1.EventTypeWarning,
		Source:         corev1.EventSource{Component: "lastgasp"},
		FirstTimestamp: now, LastTimestamp: now, Count: 1,
		ReportingController: "lastgasp.io/lastgasp", ReportingInstance: d.cfg.Instance,
	}
	_, err := d.cfg.Events.CoreV1().Events(metav1.NamespaceDefault).Create(ctx, ev, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		d.cfg.Logger.Warn("storm: the Event is not recorded", "signature", sig, "error", err)
	}
}

// mark sets Storm on the records of sig's storm (failures are logged: the
// storm is held all the same).
func (d *Detector) mark(ctx context.Context, sig string) {
	if d.cfg.Store == nil {
		return
	}
	recorded, err := d.cfg.Store.List(ctx, crashrecord.LabelSignature+"="+sig)
	if err != nil {
		d.cfg.Logger.Warn("storm: the records are not marked", "signature", sig, "error", err)
		return
	}
	for _, kc := range recorded {
		if time.Since(kc.Spec.LastTime.Time) > d.cfg.Window || kc.Spec.Storm {
			continue
		}
		if err := d.cfg.Store.MarkStorm(ctx, kc.Name); err != nil {
			d.cfg.Logger.Warn("storm: a record is not marked", "incident", kc.Name, "error", err)
		}
	}
}
