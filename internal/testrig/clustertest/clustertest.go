// Package clustertest puts in a real API server what the tests need
// there (Nodes with addresses, running Pods bound to them) and reads back
// what lastgasp wrote (Events, a Pod's end). It is for tests only.
package clustertest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	mrand "math/rand/v2"
	"strings"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/lastgasp/lastgasp/internal/cleanup"
	"github.com/lastgasp/lastgasp/internal/detect"
)

// Hold is a finalizer the tests put on pods, so that a deleted pod can
// still be read: its final status, annotations and deletion.
const Hold = "test.lastgasp.io/hold"

// Unique returns prefix with a random suffix: a name no other test uses.
func Unique(prefix string) string {
	b := make([]byte, 3)
	rand.Read(b)
	return prefix + "-" + hex.EncodeToString(b)
}

// InternalIP is a Node's address list with one InternalIP.
func InternalIP(addr string) []corev1.NodeAddress {
	return []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: addr}}
}

// LeaseDurationSeconds is the leaseDurationSeconds of the Leases Node
// makes: short, so that a confirmation (which watches the Lease for 1.1
// renew intervals, a quarter of it each, plus a margin) is quick.
const LeaseDurationSeconds = 4

// Node registers a Node with the given addresses and annotations, and its
// Lease in kube-node-lease, as a kubelet does when it registers (see
// Lease): a kubelet that then died, since nothing renews it.
func Node(t testing.TB, cs kubernetes.Interface, name string, addrs []corev1.NodeAddress, annotations map[string]string) *corev1.Node {
	t.Helper()
	ctx := context.Background()
	n, err := cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: annotations}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	n.Status.Addresses = addrs
	if n, err = cs.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := Lease(ctx, cs, n, LeaseDurationSeconds); err != nil {
		t.Fatal(err)
	}
	return n
}

// Lease creates (or replaces: a name used before) the node's Lease in
// kube-node-lease as its kubelet would: held by the node, owned by the
// Node, renewed now, with the given duration.
func Lease(ctx context.Context, cs kubernetes.Interface, node *corev1.Node, durationSeconds int32) error {
	now := metav1.NewMicroTime(time.Now())
	lease := &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Name: node.Name, OwnerReferences: []metav1.OwnerReference{{
			APIVersion: "v1", Kind: "Node", Name: node.Name, UID: node.UID,
		}}},
		Spec: coordinationv1.LeaseSpec{HolderIdentity: &node.Name, LeaseDurationSeconds: &durationSeconds, RenewTime: &now},
	}
	leases := cs.CoordinationV1().Leases(corev1.NamespaceNodeLease)
	_, err := leases.Create(ctx, lease, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		if err = leases.Delete(ctx, node.Name, metav1.DeleteOptions{}); err == nil {
			_, err = leases.Create(ctx, lease, metav1.CreateOptions{})
		}
	}
	if err != nil {
		return fmt.Errorf("lease of node %s: %w", node.Name, err)
	}
	return nil
}

// Kubelet renews the node's Lease as a live kubelet does, until the test
// ends: every quarter of its leaseDurationSeconds, plus up to 4% jitter,
// counted after each renewal ends; with renewTime on a clock that is skew
// off the test's (negative: behind).
func Kubelet(t testing.TB, cs kubernetes.Interface, node string, skew time.Duration) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	t.Cleanup(func() { cancel(); <-done })
	leases := cs.CoordinationV1().Leases(corev1.NamespaceNodeLease)
	go func() {
		defer close(done)
		for {
			l, err := leases.Get(ctx, node, metav1.GetOptions{})
			interval := time.Second
			if err == nil {
				if d := l.Spec.LeaseDurationSeconds; d != nil {
					interval = time.Duration(*d) * time.Second / 4
				}
				now := metav1.NewMicroTime(time.Now().Add(skew))
				l.Spec.RenewTime = &now
				leases.Update(ctx, l, metav1.UpdateOptions{}) // a failed renewal waits for the next, as the kubelet's
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(interval + time.Duration(mrand.Int64N(int64(interval)/25))):
			}
		}
	}()
}

// Pods creates the namespace ns and n Running pods in it, named
// pod-0, pod-1, ..., bound to node, with the given finalizers (Hold, to
// read them after their deletion).
func Pods(t testing.TB, cs kubernetes.Interface, ns, node string, n int, finalizers ...string) []*corev1.Pod {
	t.Helper()
	ctx := context.Background()
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var pods []*corev1.Pod
	for i := range n {
		p, err := cs.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("pod-%d", i), Finalizers: finalizers},
			Spec:       corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "c", Image: "busybox"}}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		p.Status.Phase = corev1.PodRunning
		if p, err = cs.CoreV1().Pods(ns).UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		pods = append(pods, p)
	}
	return pods
}

// Release removes the Hold finalizer from every pod of ns, and deletes
// ns.
func Release(cs kubernetes.Interface, ns string) {
	ctx := context.Background()
	pods, _ := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	patch := []byte(`{"metadata":{"finalizers":null}}`)
	for _, p := range pods.Items {
		cs.CoreV1().Pods(ns).Patch(ctx, p.Name, types.MergePatchType, patch, metav1.PatchOptions{})
	}
	cs.CoreV1().Namespaces().Delete(ctx, ns, metav1.DeleteOptions{})
}

// Eventually polls cond until it holds, or fails the test with what after
// timeout.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond) // polling the API server: no watch needed for a test
	}
}

// EventsFor lists the Events about an object; a Node's are in "default"
// (ns "").
func EventsFor(t testing.TB, cs kubernetes.Interface, ns string, uid types.UID) []corev1.Event {
	t.Helper()
	if ns == "" {
		ns = metav1.NamespaceDefault
	}
	list, err := cs.CoreV1().Events(ns).List(context.Background(), metav1.ListOptions{FieldSelector: "involvedObject.uid=" + string(uid)})
	if err != nil {
		t.Fatal(err)
	}
	return list.Items
}

// CheckPodEnded checks the end lastgasp gave a pod for a fatal incident:
// deleted, in wantPhase, with the three annotations, and with the
// DisruptionTarget condition (reason KernelPanic, the panic in its
// message) unless wantPhase is Succeeded: a pod that had ended before the
// panic did not die of it, and must not have one.
func CheckPodEnded(t testing.TB, p *corev1.Pod, inc detect.Incident, wantPhase corev1.PodPhase) {
	t.Helper()
	name := p.Namespace + "/" + p.Name
	if p.DeletionTimestamp == nil {
		t.Errorf("%s: not deleted", name)
	}
	if p.Status.Phase != wantPhase {
		t.Errorf("%s: phase %s, want %s", name, p.Status.Phase, wantPhase)
	}
	var cond *corev1.PodCondition
	for i := range p.Status.Conditions {
		if p.Status.Conditions[i].Type == corev1.DisruptionTarget {
			cond = &p.Status.Conditions[i]
		}
	}
	if wantPhase == corev1.PodSucceeded {
		if cond != nil {
			t.Errorf("%s: ended before the panic, yet a DisruptionTarget condition %+v", name, cond)
		}
	} else if cond == nil || cond.Status != corev1.ConditionTrue || cond.Reason != cleanup.ConditionReasonKernelPanic || !strings.Contains(cond.Message, inc.Reason) {
		t.Errorf("%s: DisruptionTarget condition %+v", name, cond)
	}
	a := p.Annotations
	if a[cleanup.AnnotationIncident] != inc.ID || a[cleanup.AnnotationReasonCode] != string(inc.Kind) ||
		a[cleanup.AnnotationReason] != "the node's kernel panicked: "+inc.Reason {
		t.Errorf("%s: annotations %v", name, a)
	}
}

// NodesGone polls the Nodes (one List a sweep, every 20 ms, so that the
// polling does not load the API server being measured) until none of
// names is left, and returns how long after since(name) each was first
// seen gone, in the order they went. An error once timeout has passed.
func NodesGone(ctx context.Context, cs kubernetes.Interface, names []string, since func(name string) time.Time, timeout time.Duration) ([]time.Duration, error) {
	gone := map[string]bool{}
	var took []time.Duration
	for deadline := time.Now().Add(timeout); len(gone) < len(names); time.Sleep(20 * time.Millisecond) {
		list, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err != nil {
			return took, fmt.Errorf("list nodes: %w", err)
		}
		present := map[string]bool{}
		for _, n := range list.Items {
			present[n.Name] = true
		}
		for _, name := range names {
			if !gone[name] && !present[name] {
				gone[name] = true
				took = append(took, time.Since(since(name)))
			}
		}
		if time.Now().After(deadline) {
			return took, fmt.Errorf("%d of %d nodes not deleted in %v", len(names)-len(gone), len(names), timeout)
		}
	}
	return took, nil
}
