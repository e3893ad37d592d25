// Package nodeindex answers, from shared informers' caches, the two
// questions the cleanup controller asks: which Node a netconsole source
// address belongs to, and which Pods are bound to a Node.
//
// A Node is found by the addresses in its status (InternalIP and
// ExternalIP, IPv4 and IPv6) and by the override annotation
// lastgasp.io/netconsole-source (a comma-separated list of addresses), for
// nodes whose netconsole leaves from another address.
package nodeindex

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
)

// SourceAnnotation names extra netconsole source addresses of a Node.
const SourceAnnotation = "lastgasp.io/netconsole-source"

// Index names.
const (
	byAddress  = "lastgasp.io/address"
	byNodeName = "lastgasp.io/node-name"
)

// Index looks Nodes up by address and Pods up by Node.
type Index struct {
	nodes       cache.SharedIndexInformer
	pods        cache.SharedIndexInformer
	nodeLister  corelisters.NodeLister
	nodesSynced cache.InformerSynced
	podsSynced  cache.InformerSynced
}

// New registers the indexes on the factory's Node and Pod informers. Start
// the factory, then WaitForSync, before looking anything up.
func New(factory informers.SharedInformerFactory) (*Index, error) {
	nodes := factory.Core().V1().Nodes()
	pods := factory.Core().V1().Pods()
	// A collector caches every Node and Pod of the cluster; their
	// managedFields (who set which field) are often half of each object
	// and nothing here reads them.
	for _, inf := range []cache.SharedIndexInformer{nodes.Informer(), pods.Informer()} {
		if err := inf.SetTransform(stripManagedFields); err != nil {
			return nil, fmt.Errorf("informer transform: %w", err)
		}
	}
	if err := nodes.Informer().AddIndexers(cache.Indexers{byAddress: nodeAddresses}); err != nil {
		return nil, fmt.Errorf("index nodes by address: %w", err)
	}
	if err := pods.Informer().AddIndexers(cache.Indexers{byNodeName: podNodeName}); err != nil {
		return nil, fmt.Errorf("index pods by node: %w", err)
	}
	return &Index{
		nodes:       nodes.Informer(),
		pods:        pods.Informer(),
		nodeLister:  nodes.Lister(),
		nodesSynced: nodes.Informer().HasSynced,
		podsSynced:  pods.Informer().HasSynced,
	}, nil
}

// WaitForSync waits until both caches have synced, or ctx is done.
func (x *Index) WaitForSync(ctx context.Context) error {
	if !cache.WaitForCacheSync(ctx.Done(), x.nodesSynced, x.podsSynced) {
		return fmt.Errorf("node and pod caches: not synced: %w", context.Cause(ctx))
	}
	return nil
}

// HasSynced reports whether both caches have synced.
func (x *Index) HasSynced() bool { return x.nodesSynced() && x.podsSynced() }

// NodeFor returns the Node a netconsole source address belongs to. With
// several (a misconfigured override), the first by name is returned and
// ambiguous is set.
func (x *Index) NodeFor(addr netip.Addr) (node *corev1.Node, ambiguous bool, err error) {
	objs, err := x.nodes.GetIndexer().ByIndex(byAddress, addressKey(addr))
	if err != nil {
		return nil, false, fmt.Errorf("look up node by address %s: %w", addr, err)
	}
	for _, o := range objs {
		n := o.(*corev1.Node)
		if node == nil || n.Name < node.Name {
			node = n
		}
	}
	return node, len(objs) > 1, nil
}

// Named returns the cached Node of that name if addr is one of its
// Addresses, and says whether a Node of that name exists at all: the
// check a node name carried in a netconsole message (userdata) must pass,
// since anyone can write any name into a datagram.
func (x *Index) Named(name string, addr netip.Addr) (node *corev1.Node, exists bool, err error) {
	n, err := x.nodeLister.Get(name)
	if apierrors.IsNotFound(err) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("look up node %s: %w", name, err)
	}
	if !slices.Contains(Addresses(n), addressKey(addr)) {
		return nil, true, nil
	}
	return n, true, nil
}

// Node returns the cached Node of that name.
func (x *Index) Node(name string) (*corev1.Node, error) {
	return x.nodeLister.Get(name)
}

// NodeNames returns the names of every cached Node.
func (x *Index) NodeNames() ([]string, error) {
	nodes, err := x.nodeLister.List(labels.Everything())
	if err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	names := make([]string, len(nodes))
	for i, n := range nodes {
		names[i] = n.Name
	}
	return names, nil
}

// Pod returns the cached Pod of that namespace and name, or nil.
func (x *Index) Pod(namespace, name string) (*corev1.Pod, error) {
	obj, ok, err := x.pods.GetIndexer().GetByKey(namespace + "/" + name)
	if err != nil || !ok {
		return nil, err
	}
	return obj.(*corev1.Pod), nil
}

// PodsOn returns the cached Pods bound to the named Node.
func (x *Index) PodsOn(nodeName string) ([]*corev1.Pod, error) {
	objs, err := x.pods.GetIndexer().ByIndex(byNodeName, nodeName)
	if err != nil {
		return nil, fmt.Errorf("list pods on node %s: %w", nodeName, err)
	}
	pods := make([]*corev1.Pod, len(objs))
	for i, o := range objs {
		pods[i] = o.(*corev1.Pod)
	}
	return pods, nil
}

// nodeAddresses is the index function: a Node's addresses, normalised.
func nodeAddresses(obj any) ([]string, error) {
	n, ok := obj.(*corev1.Node)
	if !ok {
		return nil, nil
	}
	return Addresses(n), nil
}

// addressKey is how an address is written in the index and in Addresses:
// IPv4 plain (not IPv4-mapped), no zone.
func addressKey(a netip.Addr) string {
	return a.Unmap().WithZone("").String()
}

// Addresses returns the netconsole source addresses a Node is known by:
// its InternalIP and ExternalIP addresses and those of SourceAnnotation,
// normalised (IPv4 plain, IPv6 compressed), without repeats.
func Addresses(n *corev1.Node) []string {
	seen := map[string]bool{}
	var out []string
	add := func(s string) {
		a, err := netip.ParseAddr(strings.TrimSpace(s))
		if err != nil {
			return
		}
		k := addressKey(a)
		if !seen[k] {
			seen[k] = true
			out = append(out, k)
		}
	}
	for _, a := range n.Status.Addresses {
		if a.Type == corev1.NodeInternalIP || a.Type == corev1.NodeExternalIP {
			add(a.Address)
		}
	}
	for _, s := range strings.Split(n.Annotations[SourceAnnotation], ",") {
		add(s)
	}
	return out
}

// podNodeName is the index function: the Node a Pod is bound to.
func podNodeName(obj any) ([]string, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok || p.Spec.NodeName == "" {
		return nil, nil
	}
	return []string{p.Spec.NodeName}, nil
}

// stripManagedFields drops an object's managedFields before it is cached.
func stripManagedFields(obj any) (any, error) {
	if a, err := meta.Accessor(obj); err == nil {
		a.SetManagedFields(nil)
	}
	return obj, nil
}
