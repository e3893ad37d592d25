// Package liveness confirms that a node whose kernel is said to have
// panicked is really gone, before anything of it is deleted.
//
// netconsole is plain UDP: anyone who can reach a collector can forge a
// panic line from any address. But a panicked kernel answers nothing: no
// ARP, no TCP reset, and its kubelet renews nothing. So a node is
// confirmed dead when, for a whole window, no connection to its kubelet
// port gets an answer of any kind (a reset, "connection refused", proves
// a live kernel as surely as an accepted connection does; so does an ICMP
// unreachable from a host that answers ARP, a firewall's reject), and its
// Lease in kube-node-lease did not change at all while the collector
// watched it, for longer than its kubelet's renew interval.
//
// The Lease is judged on the collector's own clock: its renewTime is the
// kubelet's clock, which may be anywhere, so it is never compared with
// anything; only a change seen by the collector counts. What proves
// nothing (no Lease, a probe the collector's own host refuses to send, a
// network it has no route to) makes the verdict undecided, never dead.
package liveness

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"syscall"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// Defaults of Prober.
const (
	DefaultPort    = 10250 // the kubelet's
	DefaultWindow  = 5 * time.Second
	DefaultAttempt = 2 * time.Second
	// DefaultLeaseMargin is added to 1.1 renew intervals: the kubelet
	// renews a quarter of leaseDurationSeconds after its last renewal
	// ended, plus up to 4% jitter, plus the request's latency.
	DefaultLeaseMargin = 2 * time.Second
	// DefaultMaxLeaseWindow bounds how long a Lease is watched: a Lease
	// that renews more rarely than that cannot be judged (undecided).
	DefaultMaxLeaseWindow = 90 * time.Second
	// kubeletLeaseDurationSeconds is the kubelet's default
	// nodeLeaseDurationSeconds, taken for a Lease that does not say.
	kubeletLeaseDurationSeconds = 40
)

// Prober checks nodes. The zero value of each field means its default.
type Prober struct {
	// Client reads Leases; nil skips the Lease check (tests of the
	// probe alone).
	Client kubernetes.Interface
	// Port is the TCP port probed. Default 10250.
	Port int
	// Window is how long connections must go unanswered, at least.
	// Default 5s. The probe goes on for the Lease's window if longer.
	Window time.Duration
	// Attempt bounds one connection attempt. Default 2s.
	Attempt time.Duration
	// LeaseMargin is added to 1.1 renew intervals to make the window
	// the Lease is watched for. Default 2s.
	LeaseMargin time.Duration
	// MaxLeaseWindow bounds that window; a Lease needing longer leaves
	// the verdict undecided. Default 90s.
	MaxLeaseWindow time.Duration
	// Do, if set, runs the probe's network work (connections, the
	// neighbour table) inside another network namespace: a test's
	// netns.Do. Default: the process's own.
	Do func(func() error) error
}

// Verdict is what a probe found: dead, alive (neither flag), or
// undecided.
type Verdict struct {
	// Dead is set when nothing answered and the Lease did not change.
	Dead bool
	// Undecided is set when nothing proved the node alive but something
	// kept the probe from proving it dead (no Lease, a probe the
	// collector could not send): try again later, never delete on it.
	Undecided bool
	// Evidence says why, in words for logs, annotations and Events.
	Evidence string
}

// sign is what one half of a confirmation (the probe, the Lease watch)
// found: alive, or a reason it proves nothing (undecided), or neither:
// silence, which is what a dead node gives.
type sign struct {
	alive     string // how the node showed it is alive
	undecided string // why this half proves nothing
}

// Confirm probes node, whose kernel is said to have panicked. It returns
// an error only when the API server could not be read: the caller
// retries.
func (p *Prober) Confirm(ctx context.Context, node *corev1.Node, source netip.Addr) (Verdict, error) {
	start := time.Now()
	addr := probeAddress(node, source)
	target := net.JoinHostPort(addr.String(), strconv.Itoa(p.port()))

	// The Lease as it is now, and how long a live kubelet may take to
	// renew it: the probe lasts at least as long.
	var lease *coordinationv1.Lease
	var leaseSign sign
	window := p.window()
	var leaseWindow time.Duration
	if p.Client != nil {
		var err error
		lease, err = p.Client.CoordinationV1().Leases(corev1.NamespaceNodeLease).Get(ctx, node.Name, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			lease, leaseSign.undecided = nil, "it has no Lease in "+corev1.NamespaceNodeLease+" to watch"
		case err != nil:
			return Verdict{}, fmt.Errorf("read lease of node %s: %w", node.Name, err)
		default:
			leaseWindow = p.LeaseWindow(lease)
			if leaseWindow > p.maxLeaseWindow() {
				leaseSign.undecided = fmt.Sprintf("its Lease renews too rarely to be watched (%s would be needed, at most %s)", leaseWindow, p.maxLeaseWindow())
				lease = nil
			} else {
				window = max(window, leaseWindow)
			}
		}
	}
	watched := time.Now()

	// The probe and the Lease watch run together; the first sign of
	// life ends both.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	probeDone := make(chan sign, 1)
	go func() {
		s := p.probe(ctx, target, start.Add(window))
		if s.alive != "" {
			cancel() // the Lease need not be watched further
		}
		probeDone <- s
	}()
	var leaseErr error
	if lease != nil {
		leaseSign, leaseErr = p.watchLease(ctx, lease, watched.Add(leaseWindow))
		if leaseSign.alive != "" {
			cancel()
		}
	}
	probeSign := <-probeDone

	switch {
	case probeSign.alive != "":
		return Verdict{Evidence: fmt.Sprintf("%s answered with %s: its kernel is alive", target, probeSign.alive)}, nil
	case leaseSign.alive != "":
		return Verdict{Evidence: leaseSign.alive + ": its kubelet is alive"}, nil
	case leaseErr != nil:
		return Verdict{}, leaseErr
	case ctx.Err() != nil:
		return Verdict{}, fmt.Errorf("probe %s: %w", target, context.Cause(ctx)) // cancelled, not finished
	case probeSign.undecided != "" || leaseSign.undecided != "":
		why := probeSign.undecided
		if why == "" {
			why = leaseSign.undecided
		} else if leaseSign.undecided != "" {
			why += "; " + leaseSign.undecided
		}
		return Verdict{Undecided: true, Evidence: fmt.Sprintf("cannot tell whether the node is dead: %s", why)}, nil
	}
	evidence := fmt.Sprintf("no answer from %s for %s", target, time.Since(start).Round(100*time.Millisecond))
	if lease != nil {
		evidence += fmt.Sprintf(", and its Lease unchanged for %s (longer than 1.1 renew intervals of %s)", time.Since(watched).Round(100*time.Millisecond), renewInterval(lease))
	}
	return Verdict{Dead: true, Evidence: evidence}, nil
}

// LeaseWindow is how long the Lease must stay unchanged, as the collector
// sees it, for its kubelet to be taken as dead: 1.1 renew intervals (a
// quarter of its leaseDurationSeconds, as the kubelet derives it) plus
// the margin.
func (p *Prober) LeaseWindow(l *coordinationv1.Lease) time.Duration {
	return renewInterval(l)*11/10 + p.leaseMargin()
}

// renewInterval is how often the Lease's kubelet renews it: a quarter of
// its duration (the kubelet's renewIntervalFraction, 0.25).
func renewInterval(l *coordinationv1.Lease) time.Duration {
	seconds := int32(kubeletLeaseDurationSeconds)
	if d := l.Spec.LeaseDurationSeconds; d != nil && *d > 0 {
		seconds = *d
	}
	return time.Duration(seconds) * time.Second / 4
}

// leasePoll is how often the Lease is read again while watched. (A watch
// would need the list and watch verbs on every node's Lease; a read of
// one by name needs only get. A change between two reads is not missed:
// the resourceVersion never goes back.)
const leasePoll = 500 * time.Millisecond

// watchLease reads the Lease until until, or until it changed from first
// in any way (resourceVersion, renewTime, holder). A read that fails
// midway is skipped; the last one, after until, must succeed.
func (p *Prober) watchLease(ctx context.Context, first *coordinationv1.Lease, until time.Time) (sign, error) {
	leases := p.Client.CoordinationV1().Leases(corev1.NamespaceNodeLease)
	for {
		wait := min(leasePoll, time.Until(until))
		final := wait <= 0
		if !final {
			select {
			case <-ctx.Done():
				return sign{}, nil
			case <-time.After(wait):
			}
			final = !time.Now().Before(until)
		}
		now, err := leases.Get(ctx, first.Name, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			return sign{undecided: "its Lease was deleted while watched"}, nil
		case err != nil && ctx.Err() != nil:
			return sign{}, nil
		case err != nil && final:
			return sign{}, fmt.Errorf("read lease of node %s: %w", first.Name, err)
		case err != nil:
			continue
		}
		if changed := leaseChange(first, now); changed != "" {
			return sign{alive: "its Lease changed while the collector watched it (" + changed + ")"}, nil
		}
		if final {
			return sign{}, nil
		}
	}
}

// leaseChange says how b differs from a, or "" if it does not.
func leaseChange(a, b *coordinationv1.Lease) string {
	switch {
	case a.UID != b.UID:
		return "recreated"
	case !renewTime(a).Equal(renewTime(b)):
		return fmt.Sprintf("renewTime %s, then %s", renewTime(a).UTC().Format(time.RFC3339Nano), renewTime(b).UTC().Format(time.RFC3339Nano))
	case holder(a) != holder(b):
		return fmt.Sprintf("holder %q, then %q", holder(a), holder(b))
	case a.ResourceVersion != b.ResourceVersion:
		return fmt.Sprintf("resourceVersion %s, then %s", a.ResourceVersion, b.ResourceVersion)
	}
	return ""
}

func holder(l *coordinationv1.Lease) string {
	if l.Spec.HolderIdentity == nil {
		return ""
	}
	return *l.Spec.HolderIdentity
}

// probe connects to target until one attempt gets an answer of any kind,
// or until. It returns how the node answered, or why the attempts prove
// nothing (a failure of the collector's own: a local firewall, no route
// to the address's network, no usable source address), or silence.
func (p *Prober) probe(ctx context.Context, target string, until time.Time) sign {
	ctx, cancel := context.WithDeadline(ctx, until)
	defer cancel()
	for {
		attempt, cancelAttempt := context.WithTimeout(ctx, p.attempt())
		start := time.Now()
		var conn net.Conn
		err := p.do(func() (err error) {
			conn, err = (&net.Dialer{}).DialContext(attempt, "tcp", target)
			return err
		})
		cancelAttempt()
		switch {
		case err == nil:
			conn.Close()
			return sign{alive: "a TCP connection"}
		case errors.Is(err, syscall.ECONNREFUSED):
			return sign{alive: "a TCP reset (connection refused)"}
		case errors.Is(err, syscall.EPERM), errors.Is(err, syscall.EACCES):
			// A local firewall, or an ICMP "administratively
			// prohibited" (Linux reports ICMPv6's as EACCES): the
			// probe cannot tell from here.
			return sign{undecided: fmt.Sprintf("the probe of %s was refused on the way (%v)", target, err)}
		case errors.Is(err, syscall.ENETUNREACH), errors.Is(err, syscall.EADDRNOTAVAIL), errors.Is(err, syscall.EAFNOSUPPORT):
			return sign{undecided: fmt.Sprintf("the collector cannot reach %s (%v)", target, err)}
		case errors.Is(err, syscall.EHOSTUNREACH):
			// Either ARP/NDP went unanswered (the entry is then
			// FAILED), or an ICMP unreachable came back: from the
			// host itself, if it answers ARP (a firewall's reject of
			// the port), and that is a live kernel.
			if answered, err := p.neighbourAnswered(target); err != nil {
				return sign{undecided: fmt.Sprintf("the neighbour table could not be read: %v", err)}
			} else if answered {
				return sign{alive: "an ICMP unreachable (a firewall's reject) from a host that answers ARP/NDP"}
			}
		}
		// A timeout, or "no route to host" (ARP went unanswered): no
		// sign of life. Do not spin when the failure was immediate.
		if ctx.Err() != nil {
			return sign{}
		}
		if wait := 200*time.Millisecond - time.Since(start); wait > 0 {
			select {
			case <-ctx.Done():
				return sign{}
			case <-time.After(wait):
			}
		}
	}
}

// Reach probes the kubelet ports of nodes believed alive (Ready, their
// Leases fresh), one attempt each, and returns how many answered in any
// way. None answering means probing proves nothing from where the
// collector runs (a firewall that drops, a security group, another
// segment): silence is then no evidence, and confirmation rests on the
// Lease alone. The caller reports it.
func (p *Prober) Reach(ctx context.Context, nodes []*corev1.Node) (answered int) {
	for _, node := range nodes {
		addr := probeAddress(node, netip.Addr{})
		if !addr.IsValid() {
			continue
		}
		target := net.JoinHostPort(addr.String(), strconv.Itoa(p.port()))
		if p.probe(ctx, target, time.Now().Add(p.attempt())).alive != "" {
			answered++
		}
	}
	return answered
}

func renewTime(l *coordinationv1.Lease) time.Time {
	if l.Spec.RenewTime == nil {
		return time.Time{}
	}
	return l.Spec.RenewTime.Time
}

// probeAddress is where the node's kubelet listens: its first InternalIP,
// else the netconsole source address.
func probeAddress(node *corev1.Node, source netip.Addr) netip.Addr {
	for _, a := range node.Status.Addresses {
		if a.Type != corev1.NodeInternalIP {
			continue
		}
		if addr, err := netip.ParseAddr(a.Address); err == nil {
			return addr.Unmap()
		}
	}
	return source.Unmap()
}

// neighbourAnswered reads the neighbour table for target's address.
func (p *Prober) neighbourAnswered(target string) (answered bool, err error) {
	ap, err := netip.ParseAddrPort(target)
	if err != nil {
		return false, err
	}
	err = p.do(func() (err error) {
		answered, err = NeighbourAnswered(ap.Addr())
		return err
	})
	return answered, err
}

// do runs fn where the probe's network work happens (see Prober.Do).
func (p *Prober) do(fn func() error) error {
	if p.Do != nil {
		return p.Do(fn)
	}
	return fn()
}

func (p *Prober) port() int {
	if p.Port == 0 {
		return DefaultPort
	}
	return p.Port
}

func (p *Prober) window() time.Duration {
	if p.Window <= 0 {
		return DefaultWindow
	}
	return p.Window
}

func (p *Prober) attempt() time.Duration {
	if p.Attempt <= 0 {
		return DefaultAttempt
	}
	return p.Attempt
}

func (p *Prober) leaseMargin() time.Duration {
	if p.LeaseMargin <= 0 {
		return DefaultLeaseMargin
	}
	return p.LeaseMargin
}

func (p *Prober) maxLeaseWindow() time.Duration {
	if p.MaxLeaseWindow <= 0 {
		return DefaultMaxLeaseWindow
	}
	return p.MaxLeaseWindow
}
