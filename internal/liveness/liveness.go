// Package liveness confirms that a node whose kernel is said to have
// panicked is really gone, before anything of it is deleted.
//
// netconsole is plain UDP: anyone who can reach a collector can forge a
// panic line from any address. But a panicked kernel answers nothing: no
// ARP, no TCP reset. So a node is confirmed dead when, for a whole window,
// no connection to its kubelet port gets an answer of any kind (a reset,
// "connection refused", proves a live kernel as surely as an accepted
// connection does; so does an ICMP unreachable from a host that answers
// ARP, a firewall's reject), and its kubelet has not renewed its Lease
// since the panic.
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
	DefaultPort       = 10250 // the kubelet's
	DefaultWindow     = 5 * time.Second
	DefaultAttempt    = 2 * time.Second
	DefaultLeaseGrace = 2 * time.Second
	// DefaultLeaseWindow covers a kubelet's renewal interval (10 s) and
	// the grace: a live kubelet renews within it.
	DefaultLeaseWindow = 12 * time.Second
)

// Prober checks nodes. The zero value of each field means its default.
type Prober struct {
	// Client reads Leases; nil skips the Lease check.
	Client kubernetes.Interface
	// Port is the TCP port probed. Default 10250.
	Port int
	// Window is how long connections must go unanswered. Default 5s.
	Window time.Duration
	// Attempt bounds one connection attempt. Default 2s.
	Attempt time.Duration
	// LeaseGrace allows for clock skew between the collector and the
	// kubelet: a renewal up to this long after the panic is not taken as
	// a sign of life. Default 2s.
	LeaseGrace time.Duration
	// LeaseWindow is how long after the panic a live kubelet would have
	// renewed its Lease: probing goes on at least until then, so that the
	// Lease check can prove something. Default 12s.
	LeaseWindow time.Duration
	// Do, if set, runs the probe's network work (connections, the
	// neighbour table) inside another network namespace: a test's
	// netns.Do. Default: the process's own.
	Do func(func() error) error
}

// Verdict is what a probe found.
type Verdict struct {
	// Dead is set when nothing answered and the Lease is stale.
	Dead bool
	// Evidence says why, in words for logs, annotations and Events.
	Evidence string
}

// Confirm probes node, whose kernel is said to have panicked at since.
// It returns an error only when it could not decide (the Lease could not
// be read): the caller retries.
func (p *Prober) Confirm(ctx context.Context, node *corev1.Node, source netip.Addr, since time.Time) (Verdict, error) {
	start := time.Now()
	addr := probeAddress(node, source)
	target := net.JoinHostPort(addr.String(), strconv.Itoa(p.port()))
	// Probe for the window, and at least until a live kubelet would have
	// renewed its Lease since the panic.
	until := time.Now().Add(p.window())
	if leaseDue := since.Add(p.leaseWindow()); leaseDue.After(until) {
		until = leaseDue
	}
	answered, how, err := p.probe(ctx, target, until)
	if err == nil {
		err = ctx.Err() // cancelled, not finished: undecided
	}
	if err != nil {
		return Verdict{}, fmt.Errorf("probe %s: %w", target, err)
	}
	if answered {
		return Verdict{Evidence: fmt.Sprintf("%s answered on %s: its kernel is alive", target, how)}, nil
	}
	renewed, err := p.leaseRenewed(ctx, node.Name)
	if err != nil {
		return Verdict{}, err
	}
	limit := since.Add(p.grace())
	if renewed.After(limit) {
		return Verdict{Evidence: fmt.Sprintf("its Lease was renewed at %s, after the panic at %s", renewed.UTC().Format(time.RFC3339), since.UTC().Format(time.RFC3339))}, nil
	}
	return Verdict{Dead: true, Evidence: fmt.Sprintf("no answer from %s for %s, and no Lease renewal since the panic", target, time.Since(start).Round(time.Second))}, nil
}

// probe connects to target until one attempt gets an answer of any kind,
// or until. It returns whether something answered and how, or an error
// when the attempts failed for a reason of the collector's own (a local
// firewall, no usable source address), which proves nothing of the node.
func (p *Prober) probe(ctx context.Context, target string, until time.Time) (bool, string, error) {
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
			return true, "a TCP connection", nil
		case errors.Is(err, syscall.ECONNREFUSED):
			return true, "a TCP reset (connection refused)", nil
		case errors.Is(err, syscall.EPERM), errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EADDRNOTAVAIL):
			return false, "", fmt.Errorf("cannot probe from here: %w", err)
		case errors.Is(err, syscall.EHOSTUNREACH):
			// Either ARP/NDP went unanswered (the entry is then
			// FAILED), or an ICMP unreachable came back: from the
			// host itself, if it answers ARP (a firewall's reject of
			// the port), and that is a live kernel.
			if answered, err := p.neighbourAnswered(target); err != nil {
				return false, "", fmt.Errorf("cannot probe from here: %w", err)
			} else if answered {
				return true, "an ICMP unreachable (a firewall's reject) from a host that answers ARP/NDP", nil
			}
		}
		// A timeout, "no route to host" (ARP went unanswered) or
		// "network unreachable": no sign of life. Do not spin when the
		// failure was immediate.
		if ctx.Err() != nil {
			return false, "", nil
		}
		if wait := 200*time.Millisecond - time.Since(start); wait > 0 {
			select {
			case <-ctx.Done():
				return false, "", nil
			case <-time.After(wait):
			}
		}
	}
}

// leaseRenewed returns when the node's kubelet last renewed its Lease, or
// the zero time if there is no Lease (or no client).
func (p *Prober) leaseRenewed(ctx context.Context, node string) (time.Time, error) {
	if p.Client == nil {
		return time.Time{}, nil
	}
	lease, err := p.Client.CoordinationV1().Leases(corev1.NamespaceNodeLease).Get(ctx, node, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return time.Time{}, nil
	}
	if err != nil {
		return time.Time{}, fmt.Errorf("read lease of node %s: %w", node, err)
	}
	return renewTime(lease), nil
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

func (p *Prober) leaseWindow() time.Duration {
	if p.LeaseWindow <= 0 {
		return DefaultLeaseWindow
	}
	return p.LeaseWindow
}

func (p *Prober) grace() time.Duration {
	if p.LeaseGrace <= 0 {
		return DefaultLeaseGrace
	}
	return p.LeaseGrace
}
