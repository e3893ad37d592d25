package cleanup

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// AnnotationRecentEnds, on the brake Lease, holds the nodes ended lately
// by every collector that shares it: a JSON list of {node, incident, at}.
const AnnotationRecentEnds = "lastgasp.io/recent-node-ends"

// Defaults of the share brake.
const (
	DefaultMaxEndedShare = 0.3
	DefaultShareWindow   = 10 * time.Minute
)

// maxRecentEnds bounds the record (an annotation: 256 KiB at most for
// all of them); far more than a cap of 10 a minute keeps in 10 minutes.
const maxRecentEnds = 1000

// maxBrakeConflicts bounds the read-modify-write retries of one
// reservation when collectors write the Lease at once.
const maxBrakeConflicts = 20

// end is one node ended, as the brake records it.
type end struct {
	Node     string    `json:"node"`
	Incident string    `json:"incident"`
	At       time.Time `json:"at"`
}

// brake is the fleet-wide brake on node deletions: at most perMinute
// nodes ended in any minute, and none while more than share of the
// cluster's nodes were ended in the last window. Its record is a
// coordination.k8s.io Lease updated with optimistic concurrency (every
// collector that names the same Lease, and every restart, shares it),
// or, without a Lease name, this process's memory.
type brake struct {
	client          kubernetes.Interface
	namespace, name string
	perMinute       int
	share           float64
	window          time.Duration
	instance        string

	mu    sync.Mutex // one reservation at a time from this process
	local []end      // the record when there is no Lease
}

// decision is what the brake says of a node about to be ended: go (both
// zero), wait (the cap), or stop (the share brake, and why).
type decision struct {
	wait    time.Duration
	braked  string
	ended   int // nodes ended in the window, for logs
	cluster int // nodes in the cluster, for logs
}

// reserve records that node is about to be ended for incident, unless
// the cap says wait or the share brake says stop. nodes are the names of
// the cluster's nodes (the cache's). A node already recorded for the
// same incident (a retry, or another collector first) goes.
func (b *brake) reserve(ctx context.Context, node, incident string, nodes []string) (decision, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.name == "" {
		d, kept, add := b.decide(b.local, node, incident, nodes, time.Now())
		b.local = kept
		if add {
			b.local = append(b.local, end{Node: node, Incident: incident, At: time.Now()})
		}
		return d, nil
	}
	leases := b.client.CoordinationV1().Leases(b.namespace)
	for range maxBrakeConflicts {
		lease, err := leases.Get(ctx, b.name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			lease, err = nil, nil
		}
		if err != nil {
			return decision{}, fmt.Errorf("read the brake lease %s/%s: %w", b.namespace, b.name, err)
		}
		var ends []end
		if lease != nil && lease.Annotations[AnnotationRecentEnds] != "" {
			if err := json.Unmarshal([]byte(lease.Annotations[AnnotationRecentEnds]), &ends); err != nil {
				// Holding fire until someone mends it is safer than
				// forgetting what was ended.
				return decision{}, fmt.Errorf("the brake lease %s/%s: its %s does not parse (delete the annotation to start over): %w", b.namespace, b.name, AnnotationRecentEnds, err)
			}
		}
		now := time.Now()
		d, kept, add := b.decide(ends, node, incident, nodes, now)
		if !add {
			return d, nil
		}
		kept = append(kept, end{Node: node, Incident: incident, At: now})
		if err := b.write(ctx, lease, kept, now); apierrors.IsConflict(err) || apierrors.IsAlreadyExists(err) {
			continue // another collector wrote first: read again
		} else if err != nil {
			return decision{}, fmt.Errorf("write the brake lease %s/%s: %w", b.namespace, b.name, err)
		}
		return d, nil
	}
	return decision{}, errors.New("the brake lease " + b.namespace + "/" + b.name + ": too many concurrent writers")
}

// decide applies the cap and the share brake to the record ends at now:
// it returns the decision, the record without entries too old to count,
// and whether node is to be added.
func (b *brake) decide(ends []end, node, incident string, nodes []string, now time.Time) (decision, []end, bool) {
	keepFor := max(time.Minute, b.window)
	var kept []end
	for _, e := range ends {
		if now.Sub(e.At) < keepFor {
			kept = append(kept, e)
		}
	}
	sort.Slice(kept, func(i, j int) bool { return kept[i].At.Before(kept[j].At) })
	if len(kept) > maxRecentEnds {
		kept = kept[len(kept)-maxRecentEnds:] // the oldest go
	}
	ended := map[string]bool{}
	var lastMinute []end
	for _, e := range kept {
		if e.Node == node && e.Incident == incident {
			return decision{}, kept, false // reserved already
		}
		if now.Sub(e.At) < b.window {
			ended[e.Node] = true
		}
		if now.Sub(e.At) < time.Minute {
			lastMinute = append(lastMinute, e)
		}
	}
	cluster := map[string]bool{}
	for _, n := range nodes {
		cluster[n] = true
	}
	for n := range ended {
		cluster[n] = true // ended, and gone from the cache
	}
	d := decision{ended: len(ended), cluster: len(cluster)}
	if len(lastMinute) >= b.perMinute {
		d.wait = lastMinute[len(lastMinute)-b.perMinute].At.Add(time.Minute).Sub(now) + 10*time.Millisecond
		return d, kept, false
	}
	if len(cluster) > 0 && float64(len(ended)) > b.share*float64(len(cluster)) {
		d.braked = fmt.Sprintf("%d of the cluster's %d nodes were ended in the last %s, more than the %.0f%% allowed: a mass death looks like a partition", len(ended), len(cluster), b.window, b.share*100)
		return d, kept, false
	}
	return d, kept, true
}

// write stores ends in the Lease: an update of the one read (its
// resourceVersion makes a concurrent write fail with a conflict), or a
// create if there was none.
func (b *brake) write(ctx context.Context, lease *coordinationv1.Lease, ends []end, now time.Time) error {
	data, err := json.Marshal(ends)
	if err != nil {
		return err
	}
	renew := metav1.NewMicroTime(now)
	leases := b.client.CoordinationV1().Leases(b.namespace)
	if lease == nil {
		_, err := leases.Create(ctx, &coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{Name: b.name, Namespace: b.namespace, Annotations: map[string]string{AnnotationRecentEnds: string(data)}},
			Spec:       coordinationv1.LeaseSpec{HolderIdentity: &b.instance, RenewTime: &renew},
		}, metav1.CreateOptions{FieldManager: fieldManager})
		return err
	}
	lease = lease.DeepCopy()
	if lease.Annotations == nil {
		lease.Annotations = map[string]string{}
	}
	lease.Annotations[AnnotationRecentEnds] = string(data)
	lease.Spec.HolderIdentity, lease.Spec.RenewTime = &b.instance, &renew
	_, err = leases.Update(ctx, lease, metav1.UpdateOptions{FieldManager: fieldManager})
	return err
}
