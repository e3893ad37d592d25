package main

import (
	"context"
	"strconv"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/lastgasp/lastgasp/internal/testrig/clustertest"
	"github.com/lastgasp/lastgasp/internal/testrig/testnet"
)

// TestDaemonProbeReach: at its start the daemon probes the kubelet port
// of a node that looks alive (Ready, its Lease renewed). The port
// answers: lastgasp_kubelet_probe_reach is 1. The node's firewall then
// drops the port silently, as a security group would: the next daemon
// says 0 and logs that a dead node's silence proves nothing from here.
func TestDaemonProbeReach(t *testing.T) {
	cs, _ := controlPlane(t)
	pair := testnet.NewPair(t)
	kubeconfig := kubeconfigIn(t, pair.Collector.Netns)
	ctx := context.Background()

	name := clustertest.Unique("reach")
	node := clustertest.Node(t, cs, name, clustertest.InternalIP(pair.Node.IPv4.String()), nil)
	node.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, LastHeartbeatTime: metav1.Now()}}
	if _, err := cs.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	clustertest.Kubelet(t, cs, name, 0)
	t.Cleanup(func() { cs.CoreV1().Nodes().Delete(context.Background(), name, metav1.DeleteOptions{}) })

	pair.Node.Netns.AnswerTCP(t, pair.Node.IPv4, 10250) // its kubelet

	run := func() *daemonProc {
		return startDaemon(t, pair.Collector.Netns, "--mode", "socket", "--listen", pair.Collector.IPv4.String(),
			"--port", strconv.Itoa(freeUDPPort(t)), "--kubeconfig", kubeconfig, "--log-format", "json",
			"--metrics-addr", "127.0.0.1:9466")
	}
	d := run()
	scrapeFor(t, pair.Collector.Netns.Do, "127.0.0.1:9466", "lastgasp_kubelet_probe_reach 1")
	if code := d.stop(t, 10*time.Second); code != exitOK {
		t.Fatalf("exit %d after SIGTERM:\n%s", code, d.out.String())
	}

	pair.Node.Netns.DropTCP(t, 10250)
	d = run()
	waitLogged(t, d.out, "the kubelet probe reaches none of the live nodes sampled: a dead node's silence proves nothing from here, so confirmation rests on its Lease alone; open TCP to the kubelet port (10250) from the collectors' nodes", 1, 15*time.Second)
	scrapeFor(t, pair.Collector.Netns.Do, "127.0.0.1:9466", "lastgasp_kubelet_probe_reach 0")
	if code := d.stop(t, 10*time.Second); code != exitOK {
		t.Errorf("exit %d after SIGTERM:\n%s", code, d.out.String())
	}
}
