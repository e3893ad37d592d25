// Package cleanup is the Kubernetes side of lastgasp: for a fatal
// incident it finds the Node, confirms it is really dead, gives every Pod
// bound to it a final, explained status (phase Failed and a
// DisruptionTarget condition, as the pod garbage collector does for a
// vanished node, so that a Job's podFailurePolicy can tell this failure
// apart), deletes the Pods, then annotates and deletes the Node. A
// non-fatal incident only annotates the Node and records an Event.
//
// Several collectors may hear the same panic: every write is idempotent
// and keyed by the incident id (merge patches, server-side apply with the
// incident's own time, Events with names derived from the id, deletions
// with a UID precondition), so the API server's state is the same whoever
// wrote it, and however often.
package cleanup

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/workqueue"

	"github.com/lastgasp/lastgasp/internal/detect"
	"github.com/lastgasp/lastgasp/internal/liveness"
	"github.com/lastgasp/lastgasp/internal/logagg"
	"github.com/lastgasp/lastgasp/internal/nodeindex"
)

// Config configures a Controller.
type Config struct {
	// Client writes to the API server.
	Client kubernetes.Interface
	// EventClient records the Events (the Node's, each Pod's, their
	// owners'), which come after the Node's deletion: a client on a rate
	// limit of its own (see EventClientConfig), so that the hundred Events
	// of one node never take the request tokens the next node's end
	// needs. Default Client.
	EventClient kubernetes.Interface
	// Index finds Nodes and their Pods.
	Index *nodeindex.Index
	// Prober confirms a node is dead before anything is deleted. Nil
	// means no confirmation (--confirm=none): for those who accept that a
	// forged panic line can delete a live node.
	Prober *liveness.Prober
	// Safety holds the guards against ending a live node, or too many,
	// that `lastgasp run` sets from its flags in one piece.
	Safety
	// AllowedSources, if not empty, are the only source networks acted
	// on; incidents from elsewhere are refused and counted.
	AllowedSources []netip.Prefix
	// MaxNodeDeletionsPerMinute caps node cleanups (a bad kernel rollout,
	// or a forgery campaign, must not empty the cluster at once): past
	// it, cleanups wait their turn, and each wait is logged and counted.
	// Default 10. With BrakeLeaseName the cap holds for every collector
	// that names the same Lease together, and across restarts.
	MaxNodeDeletionsPerMinute int
	// PodAction is what a fatal incident does to the node's Pods.
	// Default PodsFailAndDelete.
	PodAction PodAction
	// KeepNode annotates the Node and records its Event but does not
	// delete it (a cloud controller or an operator will).
	KeepNode bool
	// TaintNonFatal taints a node with a non-fatal incident
	// (lastgasp.io/kernel-oops:NoSchedule).
	TaintNonFatal bool
	// DryRun computes and logs every action and writes nothing.
	DryRun bool
	// Instance names this collector in Events (reportingInstance).
	Instance string
	// Logger receives what the controller does. Default slog.Default().
	Logger *slog.Logger
	// Aggregate, if set, takes the log lines of incidents refused for
	// their source alone (not allowed, no node's), which a forgery flood
	// makes by the thousand: a burst a minute, the rest counted.
	Aggregate *logagg.Aggregator
	// OnDone, if set, is called once an incident is finished with, from
	// a worker: with what was done, the Node it was about ("" when none
	// was found), and when.
	OnDone func(inc detect.Incident, outcome Outcome, node string, at time.Time)
	// Record, if set, keeps what was done about a node's incident (see
	// Finished), before OnDone is told: an error is retried with backoff
	// (the incident is not applied again) up to recordTries times. A
	// confirmed dead node's incident is recorded twice: first before its
	// first pod is ended, its outcome OutcomePending and the one it is
	// under way to ("pending: cleaned up"), then with its outcome; a
	// resumed incident (Resume) whose Node is gone by then is handed over
	// with no Node, to finish the pending record it may have left. A dry
	// run's outcome is prefixed OutcomeDryRun.
	Record func(ctx context.Context, f Finished) error
	// Hold, if set, is asked before a confirmed dead node is ended: a
	// reason ("" for none) not to end it, such as a storm of its crash's
	// signature. A held incident is finished as OutcomeStorm (counted,
	// the Node annotated, an Event, nothing deleted).
	Hold func(ctx context.Context, inc detect.Incident, node string) (reason string, err error)
}

// Safety is the guards of a Controller against ending a live node, or
// too many nodes at once. The zero value of each field means its default.
type Safety struct {
	// UndecidedFor is how long an incident whose node can be proved
	// neither dead nor alive (no Lease, a probe the collector cannot
	// send) is tried again, with backoff, before it is finished as
	// unconfirmed: counted, the Node annotated, an Event, nothing
	// deleted. Default 5m.
	UndecidedFor time.Duration
	// ForgeryBackoff is how long, after a panic refused because its node
	// was alive, further fatal incidents about that node (from any of
	// its source addresses) wait before they are looked at: doubling
	// with each refusal up to ForgeryBackoffMax, forgotten once that
	// long has passed without one. Forgeries cost the forger; a real
	// panic after them is delayed at most ForgeryBackoffMax. Defaults
	// 30s and 15m.
	ForgeryBackoff, ForgeryBackoffMax time.Duration
	// NodeSelector says which nodes a fatal incident may end; the others
	// are refused, counted and logged (a non-fatal incident is reported
	// on any node). Nil means DefaultNodeSelector: never a control-plane
	// node.
	NodeSelector labels.Selector
	// MaxEndedShare is the share brake: no node is ended while more than
	// this share of the cluster's nodes were ended in the last
	// ShareWindow; such incidents are finished as unconfirmed (counted,
	// the Node annotated, an Event, an error logged). Default 0.3; 1 or
	// more turns it off.
	MaxEndedShare float64
	// ShareWindow is the share brake's window. Default 10m.
	ShareWindow time.Duration
	// BrakeLeaseNamespace and BrakeLeaseName name the
	// coordination.k8s.io Lease that records recent node ends for the
	// cap and the share brake, shared by all collectors and kept across
	// restarts (updated with optimistic concurrency). No name: the
	// record is this process's own.
	BrakeLeaseNamespace, BrakeLeaseName string
}

// Outcome is how an incident was finished with.
type Outcome string

// The outcomes.
const (
	OutcomeCleanedUp   Outcome = "cleaned up"               // pods and node handled, node deleted
	OutcomeNodeKept    Outcome = "cleaned up, node kept"    // --keep-node
	OutcomeReported    Outcome = "reported"                 // non-fatal: annotated, Event
	OutcomeUnconfirmed Outcome = "refused: node alive"      // the panic was not confirmed
	OutcomeUndecided   Outcome = "unconfirmed: cannot tell" // neither dead nor alive could be proved in UndecidedFor
	OutcomeBraked      Outcome = "unconfirmed: share brake" // too many nodes ended lately (MaxEndedShare)
	OutcomeStorm       Outcome = "unconfirmed: storm"       // its crash struck too many nodes lately (Config.Hold)
	OutcomeNotAllowed  Outcome = "refused: source not allowed"
	OutcomeNotSelected Outcome = "refused: node not selected" // NodeSelector
	// OutcomeFailed: the API server refused an action for good
	// (Forbidden: the collector's RBAC; Invalid, BadRequest): retrying
	// cannot help, so the incident is finished, counted and logged with
	// the reason, not retried forever.
	OutcomeFailed        Outcome = "failed: refused by the API server"
	OutcomeUnknownSource Outcome = "refused: no node has this source"
	OutcomeAmbiguous     Outcome = "refused: several nodes claim this source"
	// OutcomeNameMismatch: the messages name a Node (netconsole
	// userdata) that exists but is not the one of the source address.
	OutcomeNameMismatch Outcome = "refused: the messages name another node"
)

// Outcome prefixes of a record (Config.Record), never of an incident
// finished with (OnDone).
const (
	// OutcomePending prefixes the outcome a confirmed dead node's
	// cleanup is under way to ("pending: cleaned up"): the record
	// written before its first pod is ended, so that a collector killed
	// after the Node's deletion cannot lose it.
	OutcomePending = "pending: "
	// OutcomeDryRun prefixes the outcome a dry run computed ("dry run:
	// cleaned up"): nothing was done.
	OutcomeDryRun = "dry run: "
)

// PodAction is what a fatal incident does to the Pods of the dead node.
type PodAction string

// The pod actions.
const (
	// PodsFailAndDelete: annotations, final status, Event, then delete
	// with grace 0. The default.
	PodsFailAndDelete PodAction = "fail-and-delete"
	// PodsFail: annotations, final status and Event; the Pods are left
	// for the pod garbage collector to delete.
	PodsFail PodAction = "fail"
	// PodsNone: the Pods are not touched; only the Node is handled.
	PodsNone PodAction = "none"
)

// ParsePodAction checks a pod action given by name.
func ParsePodAction(s string) (PodAction, error) {
	switch a := PodAction(s); a {
	case PodsFailAndDelete, PodsFail, PodsNone:
		return a, nil
	}
	return "", fmt.Errorf("pod action %q: want fail-and-delete, fail or none", s)
}

// DefaultMaxNodeDeletionsPerMinute is the default deletion cap.
const DefaultMaxNodeDeletionsPerMinute = 10

// DefaultNodeSelector is the nodes a fatal incident may end by default:
// all but the control plane's.
const DefaultNodeSelector = "!node-role.kubernetes.io/control-plane"

// Defaults of the forgery backoff.
const (
	DefaultForgeryBackoff    = 30 * time.Second
	DefaultForgeryBackoffMax = 15 * time.Minute
)

// DefaultUndecidedFor is how long an undecided incident is tried again.
const DefaultUndecidedFor = 5 * time.Minute

// Backoff of an undecided incident's attempts: 1 s doubling to 30 s.
const (
	undecidedFirstWait = time.Second
	undecidedMaxWait   = 30 * time.Second
)

// Client rate limits lastgasp asks for unless told otherwise. A node's
// cleanup costs two API calls a pod on the way to the Node's deletion
// (the status patch, the delete) and three for the node and the brake:
// about 225 calls for a node of 110 pods, within the burst, so the Node
// goes in well under a second. Its Events (about 115) then go through a
// client of their own (EventClientConfig), so that they never take the
// tokens the next node's end needs. The API server's
// Priority and Fairness protects it from a collector that needs more.
const (
	DefaultClientQPS   = 200
	DefaultClientBurst = 400
)

// EventFieldManager names the Events' own client to the API server (its
// user agent, so the field manager of each Event it creates and the name
// audit logs show), apart from the client that ends nodes and pods.
const EventFieldManager = "lastgasp-events"

// EventClientConfig returns the configuration of the Events' own client,
// a copy of cfg with a rate limit of its own: a quarter of cfg's rate and
// half its burst, on top of them. A node of 110 pods records about 115
// Events, within that burst; a hundred nodes at once record theirs over
// tens of seconds, while their ends go at the main client's rate.
func EventClientConfig(cfg *rest.Config) *rest.Config {
	ec := rest.CopyConfig(cfg)
	ec.QPS, ec.Burst = max(cfg.QPS/4, 1), max(cfg.Burst/2, 1)
	ec.UserAgent = EventFieldManager
	return ec
}

// Controller applies incidents to the cluster through a rate-limited work
// queue of incident ids.
type Controller struct {
	cfg   Config
	log   *slog.Logger
	queue workqueue.TypedRateLimitingInterface[string]
	brake *brake
	stats Stats

	// eventsOut counts the incidents whose Events are being written
	// (writeEvents), and eventsDone waits for them at the end of Run.
	eventsOut  atomic.Int64
	eventsDone sync.WaitGroup

	mu      sync.Mutex
	pending map[string]*work // by incident id
	// refused is the forgery backoff of each node a panic was refused
	// for (by name), under mu.
	refused map[string]*backoff
}

// backoff is a node's forgery backoff: refusals so far, and until when
// its incidents wait.
type backoff struct {
	refusals int
	until    time.Time
}

// work is an incident on its way through the queue.
type work struct {
	inc detect.Incident
	// reserved is set once the brake recorded this incident's node as
	// ended; cappedAt when the cap first made it wait (counted once;
	// zero: it did not).
	reserved bool
	cappedAt time.Time
	// confirmedAt is when the node was found dead, and confirmedUID the
	// UID it had then: a retry soon after, of the same node, is not
	// probed again.
	confirmedAt  time.Time
	confirmedUID types.UID
	// node is the name of the Node the source belongs to, once found.
	node string
	// undecidedSince is when a confirmation first proved nothing, and
	// undecidedTries how many have since.
	undecidedSince time.Time
	undecidedTries int
	// delayed is set once the forgery backoff held it back (counted
	// once).
	delayed bool
	// resumed is set for an incident a previous run left unfinished
	// (Resume).
	resumed bool
	// finishedAs is the outcome of an incident applied whose record
	// is still to be written; nodeUID, ended, deletedAt and recordID
	// are what the record keeps (record.go).
	finishedAs Outcome
	recordState
	// events writes the Events of a node ended, once the worker has let
	// go of the incident (Controller.writeEvents); nil when there are
	// none, or once handed over.
	events func(context.Context)
}

// attemptTimeout bounds one attempt at an incident: a probe lasts up to
// the Lease window (90 s at most), a node of 110 pods about a second.
const attemptTimeout = 2 * time.Minute

// reconfirmAfter is how long a confirmation holds: a cleanup that starts
// later (it waited for the deletion cap, or for the API server) probes
// again, since a node can reboot and come back in a minute.
const reconfirmAfter = 15 * time.Second

// New returns a Controller; start it with Run.
func New(cfg Config) *Controller {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.EventClient == nil {
		cfg.EventClient = cfg.Client
	}
	if cfg.MaxNodeDeletionsPerMinute <= 0 {
		cfg.MaxNodeDeletionsPerMinute = DefaultMaxNodeDeletionsPerMinute
	}
	if cfg.Instance == "" {
		cfg.Instance = "lastgasp"
	}
	if cfg.PodAction == "" {
		cfg.PodAction = PodsFailAndDelete
	}
	if cfg.MaxEndedShare <= 0 {
		cfg.MaxEndedShare = DefaultMaxEndedShare
	}
	if cfg.ShareWindow <= 0 {
		cfg.ShareWindow = DefaultShareWindow
	}
	if cfg.NodeSelector == nil {
		cfg.NodeSelector, _ = labels.Parse(DefaultNodeSelector) // a constant that parses
	}
	if cfg.ForgeryBackoff <= 0 {
		cfg.ForgeryBackoff = DefaultForgeryBackoff
	}
	if cfg.ForgeryBackoffMax <= 0 {
		cfg.ForgeryBackoffMax = DefaultForgeryBackoffMax
	}
	if cfg.UndecidedFor <= 0 {
		cfg.UndecidedFor = DefaultUndecidedFor
	}
	brakeName := cfg.BrakeLeaseName
	if cfg.DryRun {
		brakeName = "" // a dry run writes nothing: its record is its own
	}
	if brakeName == "" {
		cfg.Logger.Info("no brake Lease: the deletion cap and the share brake count this collector's own deletions, since it started")
	}
	return &Controller{
		cfg: cfg,
		log: cfg.Logger,
		brake: &brake{
			client: cfg.Client, namespace: cfg.BrakeLeaseNamespace, name: brakeName,
			perMinute: cfg.MaxNodeDeletionsPerMinute, share: cfg.MaxEndedShare, window: cfg.ShareWindow,
			instance: cfg.Instance,
		},
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			// Retries back off from 200ms to 10s: an API server outage
			// is retried often enough to be applied soon after it ends.
			workqueue.NewTypedItemExponentialFailureRateLimiter[string](200*time.Millisecond, 10*time.Second),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "lastgasp-incidents"},
		),
		pending: map[string]*work{},
		refused: map[string]*backoff{},
	}
}

// Stats returns the controller's counters.
func (c *Controller) Stats() *Stats { return &c.stats }

// Enqueue hands an incident to the controller. The same id twice (two
// detectors, a replay) is one piece of work.
func (c *Controller) Enqueue(inc detect.Incident) {
	c.mu.Lock()
	if _, dup := c.pending[inc.ID]; !dup {
		c.pending[inc.ID] = &work{inc: inc}
	}
	c.mu.Unlock()
	c.queue.Add(inc.ID)
}

// Resume hands the controller an incident a previous run left
// unfinished (the journal's): as Enqueue, and if its Node is gone by
// then, Config.Record is still told (with no Node), since that run may
// have deleted the Node and died before its record was final.
func (c *Controller) Resume(inc detect.Incident) {
	c.mu.Lock()
	w := c.pending[inc.ID]
	if w == nil {
		w = &work{inc: inc}
		c.pending[inc.ID] = w
	}
	w.resumed = true
	c.mu.Unlock()
	c.queue.Add(inc.ID)
}

// Pending returns how many incidents are not yet fully applied, their
// Events included.
func (c *Controller) Pending() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.pending) + int(c.eventsOut.Load())
}

// Run waits for the caches, then applies incidents with the given number
// of workers until ctx is done.
func (c *Controller) Run(ctx context.Context, workers int) error {
	defer c.queue.ShutDown()
	if err := c.cfg.Index.WaitForSync(ctx); err != nil {
		return err
	}
	var wg sync.WaitGroup
	for range max(workers, 1) {
		wg.Go(func() {
			// A panic is logged with its stack, then crashes the
			// process as it would have: the journal resumes the
			// incident at the next start.
			defer utilruntime.HandleCrash()
			for c.processNextWorkItem(ctx) {
			}
		})
	}
	<-ctx.Done()
	c.queue.ShutDown()
	wg.Wait()
	c.eventsDone.Wait()
	return nil
}

// processNextWorkItem takes one incident id off the queue and applies it.
func (c *Controller) processNextWorkItem(ctx context.Context) bool {
	id, shutdown := c.queue.Get()
	if shutdown {
		return false
	}
	defer c.queue.Done(id)

	c.mu.Lock()
	w := c.pending[id]
	c.mu.Unlock()
	if w == nil {
		c.queue.Forget(id) // applied already
		return true
	}

	// A bound on one attempt, so that a blackholed connection to the API
	// server cannot hold a worker forever: the attempt is retried.
	attempt, cancel := context.WithTimeout(ctx, attemptTimeout)
	// An incident applied already, whose record failed, is not applied
	// again.
	outcome, wait, err := w.finishedAs, time.Duration(0), error(nil)
	if outcome == "" {
		outcome, wait, err = c.apply(attempt, w)
	}
	cancel()
	switch {
	case err != nil && permanent(err):
		c.stats.Failed.Add(1)
		c.log.Error("applying incident failed for good: the API server refused it, retrying cannot help; finished as failed", "incident", id, "error", err)
		outcome, wait = OutcomeFailed, 0
		c.finishWork(ctx, id, w, outcome)
	case err != nil:
		// An API error, or the API server away: try again later, with
		// backoff. Nothing is dropped.
		c.stats.APIErrors.Add(1)
		c.log.Warn("applying incident failed, will retry", "incident", id, "error", err)
		c.queue.AddRateLimited(id)
	case wait > 0:
		// The deletion cap, or an undecided confirmation: come back
		// later.
		c.queue.Forget(id)
		c.queue.AddAfter(id, wait)
	default:
		c.writeEvents(ctx, w)
		c.finishWork(ctx, id, w, outcome)
	}
	return true
}

// writeEvents hands an incident's Events (w.events) to a goroutine of
// their own, so that the worker takes the next incident at once. Events
// are the story told after the fact: a collector killed before they are
// written loses them (the record, written before anything was deleted,
// does not).
func (c *Controller) writeEvents(ctx context.Context, w *work) {
	events := w.events
	if events == nil {
		return
	}
	w.events = nil
	c.eventsOut.Add(1)
	c.eventsDone.Go(func() {
		defer c.eventsOut.Add(-1)
		events(ctx)
	})
}

// finishWork records an incident (Config.Record), forgets its failures
// and the incident itself, and tells OnDone how it ended.
func (c *Controller) finishWork(ctx context.Context, id string, w *work, outcome Outcome) {
	if !c.record(ctx, w, outcome) {
		c.queue.AddRateLimited(id) // the record again, not the incident
		return
	}
	c.queue.Forget(id)
	c.mu.Lock()
	delete(c.pending, id)
	c.mu.Unlock()
	if c.cfg.OnDone != nil {
		c.cfg.OnDone(w.inc, outcome, w.node, time.Now())
	}
}

// permanent reports whether the API server refused a request for good:
// the same request can only be refused again.
func permanent(err error) bool {
	return apierrors.IsForbidden(err) || apierrors.IsInvalid(err) || apierrors.IsBadRequest(err) || apierrors.IsMethodNotSupported(err)
}

// incidentAttrs are the log attributes every line about an incident
// carries.
func incidentAttrs(inc detect.Incident) []any {
	return []any{"incident", inc.ID, "source", inc.Source, "kind", inc.Kind, "fatal", inc.Fatal}
}

// logRefused logs an incident refused for its source alone (not allowed, no
// node's): what a flood of forged datagrams from spoofed addresses makes,
// so through Config.Aggregate when set, a burst a minute.
func (c *Controller) logRefused(inc detect.Incident, msg string, args ...any) {
	args = append(incidentAttrs(inc), args...)
	if c.cfg.Aggregate == nil {
		c.log.Warn(msg, args...)
		return
	}
	c.cfg.Aggregate.Log("cleanup: "+msg, slog.LevelWarn, msg, args...)
}

// apply takes one incident as far as it can go: done (its outcome, 0,
// nil), wait for the deletion cap ("", d, nil), or retry after an error.
func (c *Controller) apply(ctx context.Context, w *work) (Outcome, time.Duration, error) {
	inc := w.inc
	log := c.log.With(incidentAttrs(inc)...)

	if !c.allowed(inc.Source) {
		c.stats.NotAllowed.Add(1)
		c.logRefused(inc, "incident refused: source not in the allowed networks")
		return OutcomeNotAllowed, 0, nil
	}
	node, ambiguous, err := c.cfg.Index.NodeFor(inc.Source)
	if err != nil {
		return "", 0, err
	}
	if inc.NodeName != "" {
		// The node the kernel named in its messages (netconsole userdata)
		// is believed only when the source address is that Node's too:
		// then it settles which of several claimants is meant. A name of
		// no Node (a hostname that is not the Node's name) is ignored; a
		// name of another Node than the address finds contradicts it, and
		// nothing is done.
		named, exists, err := c.cfg.Index.Named(inc.NodeName, inc.Source)
		switch {
		case err != nil:
			return "", 0, err
		case named != nil:
			node, ambiguous = named, false
		case exists:
			c.stats.NameMismatch.Add(1)
			c.logRefused(inc, "incident refused: its messages name a node whose addresses are not the source: no action", "node_name", inc.NodeName, "reason", inc.Reason)
			return OutcomeNameMismatch, 0, nil
		}
	}
	if node == nil {
		c.stats.UnknownSource.Add(1)
		c.logRefused(inc, "incident from a source that is no node's: no action", "reason", inc.Reason)
		return OutcomeUnknownSource, 0, nil
	}
	log = log.With("node", node.Name)
	w.node, w.nodeUID = node.Name, node.UID
	if ambiguous && inc.Fatal {
		// Two Nodes claim the address (a stale Node with a recycled IP,
		// or an override annotation naming another's): deleting either
		// could be wrong.
		c.stats.Ambiguous.Add(1)
		log.Warn("several nodes claim this source address: nothing deleted")
		return OutcomeAmbiguous, 0, nil
	}
	if !inc.Fatal {
		c.stats.NonFatal.Add(1)
		return OutcomeReported, 0, c.reportNonFatal(ctx, log, node, inc)
	}

	if !c.cfg.NodeSelector.Matches(labels.Set(node.Labels)) {
		c.stats.NotSelected.Add(1)
		log.Warn("the node is not one lastgasp may end (--node-selector): nothing deleted", "node_selector", c.cfg.NodeSelector.String(), "reason", inc.Reason)
		return OutcomeNotSelected, 0, nil
	}
	if c.cfg.Prober != nil && (node.UID != w.confirmedUID || time.Since(w.confirmedAt) > reconfirmAfter) {
		if wait := c.forgeryWait(node.Name); wait > 0 {
			if !w.delayed {
				w.delayed = true
				c.stats.ForgeryDelayed.Add(1)
				log.Warn("a panic was refused for this node lately: this one waits before it is looked at", "wait", wait.Round(time.Millisecond))
			}
			return "", wait, nil
		}
		v, err := c.cfg.Prober.Confirm(ctx, node, inc.Source)
		if err != nil {
			return "", 0, err
		}
		if v.Undecided {
			return c.undecided(ctx, log, w, node, v.Evidence)
		}
		if !v.Dead {
			c.refuse(node.Name)
			c.stats.Unconfirmed.Add(1)
			log.Warn("panic not confirmed: the node is alive; nothing deleted", "evidence", v.Evidence)
			return OutcomeUnconfirmed, 0, c.reportUnconfirmed(ctx, log, node, inc, true, v.Evidence)
		}
		log.Info("node confirmed dead", "evidence", v.Evidence)
		w.confirmedAt, w.confirmedUID = time.Now(), node.UID
	}

	if c.cfg.Hold != nil && !w.reserved {
		reason, err := c.cfg.Hold(ctx, inc, node.Name)
		if err != nil {
			return "", 0, err
		}
		if reason != "" {
			c.stats.Stormed.Add(1)
			log.Error("this node is not ended; nothing deleted", "why", reason)
			return OutcomeStorm, 0, c.reportUnconfirmed(ctx, log, node, inc, false, reason)
		}
	}
	if !w.reserved {
		nodes, err := c.cfg.Index.NodeNames()
		if err != nil {
			return "", 0, err
		}
		d, err := c.brake.reserve(ctx, node.Name, inc.ID, nodes)
		if err != nil {
			return "", 0, err
		}
		if d.braked != "" {
			c.stats.Braked.Add(1)
			log.Error("share brake: this node is not ended; nothing deleted", "why", d.braked, "ended", d.ended, "nodes", d.cluster)
			return OutcomeBraked, 0, c.reportUnconfirmed(ctx, log, node, inc, false, "share brake: "+d.braked)
		}
		if d.wait > 0 {
			if w.cappedAt.IsZero() {
				w.cappedAt = time.Now()
				c.stats.Capped.Add(1)
				log.Warn("node deletion cap reached: this node waits its turn", "cap_per_minute", c.cfg.MaxNodeDeletionsPerMinute, "wait", d.wait.Round(time.Millisecond))
			}
			// It is probed again when its turn comes, if that is
			// later than reconfirmAfter.
			return "", d.wait, nil
		}
		w.reserved = true
	}
	if c.cfg.KeepNode {
		return OutcomeNodeKept, 0, c.cleanUp(ctx, log, node, w, OutcomeNodeKept)
	}
	return OutcomeCleanedUp, 0, c.cleanUp(ctx, log, node, w, OutcomeCleanedUp)
}

// undecided handles a confirmation that proved nothing: try again later,
// with backoff, until UndecidedFor has passed since the first; then
// finish the incident as unconfirmed, nothing deleted.
func (c *Controller) undecided(ctx context.Context, log *slog.Logger, w *work, node *corev1.Node, evidence string) (Outcome, time.Duration, error) {
	if w.undecidedSince.IsZero() {
		w.undecidedSince = time.Now()
	}
	left := c.cfg.UndecidedFor - time.Since(w.undecidedSince)
	if left <= 0 {
		c.stats.Undecided.Add(1)
		log.Warn("panic unconfirmed: whether the node is dead could not be told; nothing deleted", "evidence", evidence, "tried", w.undecidedTries+1)
		return OutcomeUndecided, 0, c.reportUnconfirmed(ctx, log, node, w.inc, false, evidence)
	}
	wait := min(undecidedFirstWait<<min(w.undecidedTries, 5), undecidedMaxWait, left)
	w.undecidedTries++
	c.stats.UndecidedRetries.Add(1)
	log.Info("cannot tell yet whether the node is dead: looking again later", "evidence", evidence, "wait", wait.Round(time.Millisecond))
	return "", wait, nil
}

// forgeryWait is how long incidents about node must still wait after a
// refusal (0: none).
func (c *Controller) forgeryWait(node string) time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	if b := c.refused[node]; b != nil {
		return time.Until(b.until)
	}
	return 0
}

// refuse starts or doubles node's forgery backoff, and forgets the
// backoffs that ended more than ForgeryBackoffMax ago.
func (c *Controller) refuse(node string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := time.Now()
	for name, b := range c.refused {
		if now.Sub(b.until) > c.cfg.ForgeryBackoffMax {
			delete(c.refused, name)
		}
	}
	b := c.refused[node]
	if b == nil {
		b = &backoff{}
		c.refused[node] = b
	}
	wait := c.cfg.ForgeryBackoff << min(b.refusals, 30)
	if wait <= 0 || wait > c.cfg.ForgeryBackoffMax {
		wait = c.cfg.ForgeryBackoffMax
	}
	b.refusals++
	b.until = now.Add(wait)
}

// allowed reports whether addr is in the allowed networks.
func (c *Controller) allowed(addr netip.Addr) bool {
	if len(c.cfg.AllowedSources) == 0 {
		return true
	}
	addr = addr.Unmap()
	for _, p := range c.cfg.AllowedSources {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}

// write runs fn unless this is a dry run, in which case it logs what would
// have been done.
func (c *Controller) write(log *slog.Logger, what string, fn func() error) error {
	if c.cfg.DryRun {
		log.Info("dry run: would "+what, "dry_run", true)
		return nil
	}
	if err := fn(); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}
