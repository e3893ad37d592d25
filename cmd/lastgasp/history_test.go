package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/dynamic"

	"github.com/lastgasp/lastgasp/internal/cleanup"
	"github.com/lastgasp/lastgasp/internal/crashrecord"
	"github.com/lastgasp/lastgasp/internal/detect"
	"github.com/lastgasp/lastgasp/internal/pattern"
	"github.com/lastgasp/lastgasp/internal/testrig/clustertest"
	"github.com/lastgasp/lastgasp/internal/testrig/testnet"
)

var crdOnce struct {
	sync.Once
	err error
}

// records returns a Store on the shared control plane, with the CRD of
// deploy/kernelcrash-crd.yaml installed, and an administrator's
// kubeconfig.
func records(t *testing.T) (*crashrecord.Store, string) {
	t.Helper()
	_, kubeconfig := controlPlane(t)
	crdOnce.Do(func() {
		crdOnce.err = shared.cp.InstallKernelCrashCRD()
	})
	if crdOnce.err != nil {
		t.Fatal(crdOnce.err)
	}
	dyn, err := dynamic.NewForConfig(shared.cp.Config)
	if err != nil {
		t.Fatal(err)
	}
	return crashrecord.NewStore(dyn), kubeconfig
}

// crashed writes the record of a panic of node, ago before now, that
// ended pod (NS/NAME, "" for none).
func crashed(t *testing.T, store *crashrecord.Store, node string, ago time.Duration, cause, pod string) *crashrecord.KernelCrash {
	t.Helper()
	inc := detect.Incident{
		ID:     clustertest.Unique("inc")[4:] + "0123456789",
		Source: netip.MustParseAddr("10.220.0.1"),
		Kind:   pattern.KindOops, Fatal: true,
		Reason: "Kernel panic - not syncing: Fatal exception", Cause: cause,
		First: time.Now().Add(-ago - time.Second), Last: time.Now().Add(-ago),
		Lines: []string{"[    3.763251] " + cause, "[    3.771621] RIP: 0010:crashmod_init+0x58/0x1000 [crashmod]", "[    3.799999] Kernel panic - not syncing: Fatal exception"},
	}
	f := cleanup.Finished{Incident: inc, Outcome: cleanup.OutcomeCleanedUp, Node: node, NodeUID: "uid-1", NodeDeletedAt: time.Now()}
	if ns, name, ok := strings.Cut(pod, "/"); ok {
		f.Pods = []cleanup.EndedPod{{Namespace: ns, Name: name, UID: "uid-2", OwnerKind: "Job", OwnerName: "nightly"}}
	}
	kc := crashrecord.FromFinished(f, "test")
	if _, err := store.Create(context.Background(), kc); err != nil {
		t.Fatal(err)
	}
	return kc
}

// history runs "lastgasp history" with args; it returns the output and
// the exit code.
func historyRun(t *testing.T, kubeconfig string, args ...string) (string, int) {
	t.Helper()
	var out, errs bytes.Buffer
	code := run(context.Background(), append([]string{"history", "--kubeconfig", kubeconfig}, args...), &out, &errs)
	if code != exitOK {
		t.Logf("lastgasp history %q: exit %d: %s", args, code, errs.String())
	}
	return out.String(), code
}

// TestHistory: lastgasp history prints the records from the API server,
// one line a crash, filtered by node, pod and age, as JSON, and one
// crash whole.
func TestHistory(t *testing.T) {
	store, kubeconfig := records(t)
	a, b := clustertest.Unique("node-a"), clustertest.Unique("node-b")
	ns := clustertest.Unique("ns")
	oldA := crashed(t, store, a, 10*24*time.Hour, "BUG: kernel NULL pointer dereference, address: 0000000000000008", ns+"/job-x")
	newA := crashed(t, store, a, time.Hour, "BUG: kernel NULL pointer dereference, address: 0000000000000010", "")
	newB := crashed(t, store, b, 2*time.Hour, "general protection fault: 0000 [#1] PREEMPT SMP NOPTI", "")

	// names returns the incidents of the lines printed, in order.
	names := func(out string) []string {
		var ids []string
		for _, l := range strings.Split(strings.TrimSpace(out), "\n")[1:] {
			if f := strings.Fields(l); len(f) > 1 {
				ids = append(ids, f[1])
			}
		}
		return ids
	}
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"--node", a}, []string{oldA.Name, newA.Name}}, // oldest first
		{[]string{"--node", a, "--since", "7d"}, []string{newA.Name}},
		{[]string{"--pod", ns + "/job-x"}, []string{oldA.Name}},
		{[]string{"--node", b, "--since", "90m"}, nil},
		{[]string{"--node", b}, []string{newB.Name}},
	} {
		out, code := historyRun(t, kubeconfig, tc.args...)
		if got := names(out); code != exitOK || strings.Join(got, " ") != strings.Join(tc.want, " ") {
			t.Errorf("history %q: exit %d, incidents %v, want %v\n%s", tc.args, code, got, tc.want, out)
		}
	}
	// The same crash on both nodes of node a: one signature; node b's is
	// another.
	out, _ := historyRun(t, kubeconfig, "--node", a)
	if oldA.Spec.Signature.ID != newA.Spec.Signature.ID || oldA.Spec.Signature.ID == newB.Spec.Signature.ID ||
		strings.Count(out, oldA.Spec.Signature.ID) != 2 || !strings.Contains(out, "in crashmod_init") {
		t.Errorf("signatures %s %s %s in\n%s", oldA.Spec.Signature.ID, newA.Spec.Signature.ID, newB.Spec.Signature.ID, out)
	}

	// JSON: one record a line.
	out, code := historyRun(t, kubeconfig, "--node", b, "--json")
	var got crashrecord.KernelCrash
	if err := json.Unmarshal([]byte(out), &got); code != exitOK || err != nil || got.Name != newB.Name || got.Spec.Cause != newB.Spec.Cause {
		t.Errorf("--json: exit %d, %v: %s", code, err, out)
	}

	// One crash whole: the record and the kernel's lines.
	out, code = historyRun(t, kubeconfig, oldA.Name)
	for _, want := range []string{"Incident:", oldA.Name, "Node:", a, "Outcome:", string(cleanup.OutcomeCleanedUp), ns + "/job-x (Job nightly)",
		"Kernel lines (3):", "RIP: 0010:crashmod_init+0x58/0x1000 [crashmod]", "Node deleted:"} {
		if code != exitOK || !strings.Contains(out, want) {
			t.Errorf("history %s: exit %d, no %q in\n%s", oldA.Name, code, want, out)
		}
	}
	if _, code := historyRun(t, kubeconfig, "0000000000000000"); code != exitError {
		t.Errorf("an unknown incident: exit %d, want %d", code, exitError)
	}
}

// TestHistoryBadFlags: a wrong flag is a usage error, before any call.
func TestHistoryBadFlags(t *testing.T) {
	for _, args := range [][]string{{"--since", "x"}, {"--since", "-3d"}, {"--pod", "nonamespace"}, {"a", "b"}, {"--nope"}} {
		var out, errs bytes.Buffer
		if code := run(context.Background(), append([]string{"history"}, args...), &out, &errs); code != exitUsage {
			t.Errorf("history %q: exit %d, want %d", args, code, exitUsage)
		}
	}
}

// TestRunRecordsCrash: a collector that ends a node keeps its record in
// the API server: the real capture's crash, its signature, the pods
// ended; lastgasp history prints it after the node and the collector
// are gone.
func TestRunRecordsCrash(t *testing.T) {
	store, kubeconfig := records(t)
	cs, _ := controlPlane(t)
	pair := testnet.NewPair(t)
	ctx := context.Background()
	node := clustertest.Node(t, cs, clustertest.Unique("node"), clustertest.InternalIP(pair.Node.IPv4.String()), nil)
	ns := clustertest.Unique("ns")
	clustertest.Pods(t, cs, ns, node.Name, 2)

	c := startCollector(t, pair, "--mode", "xdp", "--interface", pair.Collector.Ifname, "--kubeconfig", kubeconfig, "--confirm", "none")
	conn := nodeSocket(t, pair)
	replay(t, conn, &net.UDPAddr{IP: pair.Collector.IPv4.AsSlice(), Port: 6666}, "sysrq-ext-v4.pcap")
	var all []crashrecord.KernelCrash
	clustertest.Eventually(t, 30*time.Second, "no record of node "+node.Name, func() bool {
		all, _ = store.List(ctx, crashrecord.LabelNode+"="+node.Name)
		return len(all) > 0 && !crashrecord.Pending(all[0].Spec.Outcome) // written pending first
	})
	c.stop(t)
	s := all[0].Spec
	if len(all) != 1 || s.Kind != string(pattern.KindSysrq) || !s.Fatal || s.Outcome != string(cleanup.OutcomeCleanedUp) ||
		s.PodCount != 2 || s.NodeDeletedAt == nil || len(s.Lines) == 0 || s.Signature.Frames[0] != "sysrq_handle_crash" {
		t.Errorf("%d records; %+v", len(all), s)
	}
	out, code := historyRun(t, kubeconfig, "--node", node.Name)
	if code != exitOK || !strings.Contains(out, all[0].Name) || !strings.Contains(out, "sysrq: Trigger a crash in sysrq_handle_crash") {
		t.Errorf("history: exit %d\n%s", code, out)
	}
}
