package main

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/lastgasp/lastgasp/internal/cleanup"
	"github.com/lastgasp/lastgasp/internal/crashrecord"
	"github.com/lastgasp/lastgasp/internal/testrig/clustertest"
	"github.com/lastgasp/lastgasp/internal/testrig/testnet"
)

// TestDaemonKilledBeforeRecord: the collector is killed (SIGKILL) after
// it deleted the Node, before the crash's record is final: the API
// server refuses the final record (a ValidatingAdmissionPolicy lets only
// a pending one of this node through), and the collector is killed while
// it retries. The next start resumes the incident from the journal,
// finds the Node gone, and the record is there, final: cleaned up, the
// pods ended. Before the record was written pending ahead of the first
// deletion, the resumed incident found no Node and no record was ever
// written.
func TestDaemonKilledBeforeRecord(t *testing.T) {
	store, _ := records(t)
	cs, _ := controlPlane(t)
	pair := testnet.NewPair(t)
	ctx := context.Background()
	node := clustertest.Node(t, cs, clustertest.Unique("node"), clustertest.InternalIP(pair.Node.IPv4.String()), nil)
	clustertest.Pods(t, cs, clustertest.Unique("ns"), node.Name, 2)
	dyn, err := dynamic.NewForConfig(shared.cp.Config)
	if err != nil {
		t.Fatal(err)
	}
	refuse := refuseFinalRecord(t, cs, dyn, node.Name)

	args := []string{"--mode", "xdp", "--interface", pair.Collector.Ifname, "--xdp-mode", "native",
		"--kubeconfig", kubeconfigIn(t, pair.Collector.Netns), "--confirm", "none",
		"--journal", t.TempDir(), "--pin-path", pinPath(t)}
	d := startDaemon(t, pair.Collector.Netns, args...)
	replay(t, nodeSocket(t, pair), &net.UDPAddr{IP: pair.Collector.IPv4.AsSlice(), Port: 6666}, "sysrq-ext-v4.pcap")
	waitNodeGone(t, cs, node.Name, 60*time.Second, d.out)
	waitLogged(t, d.out, "the incident's record could not be written, will retry", 1, 30*time.Second)
	d.kill()
	all, err := store.List(ctx, crashrecord.LabelNode+"="+node.Name)
	if err != nil || len(all) != 1 || !crashrecord.Pending(all[0].Spec.Outcome) {
		t.Fatalf("records left by the killed collector: %+v, %v", all, err)
	}
	refuse()

	d = startDaemon(t, pair.Collector.Netns, args...)
	clustertest.Eventually(t, 30*time.Second, "record never final:\n"+d.out.String(), func() bool {
		all, err = store.List(ctx, crashrecord.LabelNode+"="+node.Name)
		return err == nil && len(all) == 1 && !crashrecord.Pending(all[0].Spec.Outcome)
	})
	if code := d.stop(t, 10*time.Second); code != exitOK {
		t.Errorf("exit %d after SIGTERM:\n%s", code, d.out.String())
	}
	s := all[0].Spec
	if s.Outcome != string(cleanup.OutcomeCleanedUp) || s.Node.UID != node.UID || s.NodeDeletedAt == nil || s.PodCount != 2 || len(s.Lines) == 0 {
		t.Errorf("record %+v", s)
	}
}

// refuseFinalRecord makes the API server refuse every KernelCrash record
// of node but a pending one (413, which the collector retries); the
// function it returns lifts that. Each waits until the API server acts on
// the change.
func refuseFinalRecord(t *testing.T, cs kubernetes.Interface, dyn dynamic.Interface, node string) func() {
	t.Helper()
	ctx := context.Background()
	name := clustertest.Unique("refuse-final-record")
	reason := metav1.StatusReasonRequestEntityTooLarge
	policy := &admissionv1.ValidatingAdmissionPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: admissionv1.ValidatingAdmissionPolicySpec{
			MatchConstraints: &admissionv1.MatchResources{ResourceRules: []admissionv1.NamedRuleWithOperations{{
				RuleWithOperations: admissionv1.RuleWithOperations{
					Operations: []admissionv1.OperationType{admissionv1.Create, admissionv1.Update},
					Rule:       admissionv1.Rule{APIGroups: []string{"lastgasp.io"}, APIVersions: []string{"*"}, Resources: []string{"kernelcrashes"}},
				},
			}}},
			Validations: []admissionv1.Validation{{
				Expression: fmt.Sprintf("object.metadata.labels[%q] != %q || object.spec.outcome.startsWith(%q)", crashrecord.LabelNode, node, cleanup.OutcomePending),
				Reason:     &reason,
				Message:    "test: only a pending record",
			}},
		},
	}
	if _, err := cs.AdmissionregistrationV1().ValidatingAdmissionPolicies().Create(ctx, policy, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	binding := &admissionv1.ValidatingAdmissionPolicyBinding{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec:       admissionv1.ValidatingAdmissionPolicyBindingSpec{PolicyName: name, ValidationActions: []admissionv1.ValidationAction{admissionv1.Deny}},
	}
	if _, err := cs.AdmissionregistrationV1().ValidatingAdmissionPolicyBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// A final record of node, written as a dry run: refused once the
	// policy is in force, and again once it is lifted.
	probe := func() error {
		id := clustertest.Unique("probe")
		u := &unstructured.Unstructured{}
		u.SetUnstructuredContent(map[string]any{
			"apiVersion": crashrecord.APIVersion, "kind": crashrecord.Kind,
			"metadata": map[string]any{"name": id, "labels": map[string]any{crashrecord.LabelNode: node, crashrecord.LabelSignature: "0123456789abcdef"}},
			"spec": map[string]any{"incident": id, "node": map[string]any{"name": node}, "source": "10.0.0.1", "kind": "oops", "fatal": true,
				"reason": "r", "cause": "c", "firstTime": "2026-01-01T00:00:00Z", "lastTime": "2026-01-01T00:00:00Z",
				"signature": map[string]any{"id": "0123456789abcdef", "title": "t"}, "outcome": "cleaned up", "podCount": 0},
		})
		_, err := dyn.Resource(crashrecord.Resource).Create(ctx, u, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		return err
	}
	clustertest.Eventually(t, 30*time.Second, "the policy never refused a final record", func() bool { return probe() != nil })
	return func() {
		t.Helper()
		cs.AdmissionregistrationV1().ValidatingAdmissionPolicyBindings().Delete(ctx, name, metav1.DeleteOptions{})
		cs.AdmissionregistrationV1().ValidatingAdmissionPolicies().Delete(ctx, name, metav1.DeleteOptions{})
		clustertest.Eventually(t, 30*time.Second, "the policy still refuses a final record", func() bool {
			err := probe()
			if err != nil {
				t.Logf("probe: %v", err)
			}
			return err == nil
		})
	}
}
