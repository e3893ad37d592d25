package deploy

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/lastgasp/lastgasp/internal/agent"
	"github.com/lastgasp/lastgasp/internal/nodeindex"
	"github.com/lastgasp/lastgasp/internal/testrig/clustertest"
	"github.com/lastgasp/lastgasp/internal/testrig/testnet"
)

// agentFile holds the agent's objects.
const agentFile = "components/agent/agent.yaml"

// TestAgentCluster creates every object of lastgasp.yaml's Namespace and
// agent.yaml in a real kube-apiserver, then runs the agent's own code
// under the agent ServiceAccount's token, in a node's network namespace
// (netconsole's configfs a plain directory: this host has none, and the
// kernel finds a target's device in the initial namespace only): it
// reads the collector Service's EndpointSlices, annotates its Node, and
// records an Event when setup fails, with not one call refused; and the
// ServiceAccount may do nothing else.
func TestAgentCluster(t *testing.T) {
	testnet.RequireRoot(t)
	m := load(t)
	objs := decodeFile(t, agentFile)
	var account *corev1.ServiceAccount
	var ds *appsv1.DaemonSet
	for _, o := range objs {
		switch o := o.(type) {
		case *corev1.ServiceAccount:
			account = o
		case *appsv1.DaemonSet:
			ds = o
		}
	}
	if account == nil || ds == nil || ds.Spec.Template.Spec.ServiceAccountName != account.Name {
		t.Fatalf("%s: want a ServiceAccount and a DaemonSet running under it", agentFile)
	}
	var service string
	for _, a := range ds.Spec.Template.Spec.Containers[0].Args {
		if v, ok := strings.CutPrefix(a, "--service="); ok {
			service = v
		}
	}
	svcNS, svcName, _ := strings.Cut(service, "/")

	ctx := t.Context()
	cp, admin := startControlPlane(t)
	create(t, cp, admin, &manifests{objects: append([]runtime.Object{m.namespace}, objs...)})
	sa, _ := serviceAccountClient(t, cp, admin, account)

	// The collectors, as the EndpointSlice controller would publish them
	// for the Service.
	pair := testnet.NewPair(t)
	slice, err := admin.DiscoveryV1().EndpointSlices(svcNS).Create(ctx, &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: svcName + "-v4", Namespace: svcNS,
			Labels: map[string]string{discoveryv1.LabelServiceName: svcName}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{pair.Collector.IPv4.String()}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	node := clustertest.Node(t, admin, "agent-node", clustertest.InternalIP("192.0.2.1"), nil)

	a, err := agent.New(agent.Config{Client: sa, NodeName: node.Name, Namespace: svcNS, Service: svcName,
		Dir: t.TempDir(), Resync: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- pair.Node.Netns.Do(func() error { return a.Run(runCtx) }) }()
	defer func() {
		stop()
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("agent: %v", err)
		}
	}()

	clustertest.Eventually(t, 15*time.Second, "the Node annotated", func() bool {
		n, err := admin.CoreV1().Nodes().Get(ctx, node.Name, metav1.GetOptions{})
		return err == nil && n.Annotations[nodeindex.SourceAnnotation] == pair.Node.IPv4.String()
	})
	slice.Endpoints = []discoveryv1.Endpoint{{Addresses: []string{netip.MustParseAddr("198.51.100.7").String()}}}
	if _, err := admin.DiscoveryV1().EndpointSlices(svcNS).Update(ctx, slice, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	clustertest.Eventually(t, 15*time.Second, "a "+agent.FailureReason+" Event", func() bool {
		for _, e := range clustertest.EventsFor(t, admin, metav1.NamespaceDefault, node.UID) {
			if e.Reason == agent.FailureReason {
				return true
			}
		}
		return false
	})

	core, discovery := "", "discovery.k8s.io"
	for _, a := range []access{
		{"get", core, "nodes", "", ""}, {"patch", core, "nodes", "", ""},
		{"list", discovery, "endpointslices", "", svcNS}, {"watch", discovery, "endpointslices", "", svcNS},
		{"create", core, "events", "", "default"},
	} {
		if !mayDo(t, sa, a) {
			t.Errorf("refused: %s", a)
		}
	}
	for _, a := range []access{
		{"list", core, "nodes", "", ""}, {"delete", core, "nodes", "", ""}, {"update", core, "nodes", "", ""},
		{"patch", core, "nodes", "status", ""}, {"list", core, "pods", "", ""}, {"delete", core, "pods", "", "default"},
		{"list", discovery, "endpointslices", "", "default"}, {"create", discovery, "endpointslices", "", svcNS},
		{"update", core, "events", "", "default"}, {"create", core, "events", "", svcNS},
		{"get", core, "secrets", "", svcNS}, {"get", core, "configmaps", "", svcNS}, {"*", "*", "*", "", ""},
	} {
		if mayDo(t, sa, a) {
			t.Errorf("allowed: %s", a)
		}
	}
}
