package clustertest

import (
	"context"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// Owners creates, in ns, a Job, a ReplicaSet, a StatefulSet and a
// DaemonSet named "job", "rs", "sts" and "ds" (no controller runs them:
// they make no pods of their own), and returns a controller reference to
// each, by kind.
func Owners(t testing.TB, cs kubernetes.Interface, ns string) map[string]metav1.OwnerReference {
	t.Helper()
	ctx := context.Background()
	labels := map[string]string{"app": "x"}
	selector := &metav1.LabelSelector{MatchLabels: labels}
	template := corev1.PodTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{Labels: labels},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "busybox"}}},
	}
	refs := map[string]metav1.OwnerReference{}
	ref := func(kind, apiVersion string, meta metav1.ObjectMeta, err error) {
		if err != nil {
			t.Fatalf("create %s: %v", kind, err)
		}
		yes := true
		refs[kind] = metav1.OwnerReference{APIVersion: apiVersion, Kind: kind, Name: meta.Name, UID: meta.UID, Controller: &yes}
	}
	jobTemplate := template
	jobTemplate.Spec.RestartPolicy = corev1.RestartPolicyNever
	job, err := cs.BatchV1().Jobs(ns).Create(ctx, &batchv1.Job{ObjectMeta: metav1.ObjectMeta{Name: "job"}, Spec: batchv1.JobSpec{Template: jobTemplate}}, metav1.CreateOptions{})
	ref("Job", "batch/v1", job.ObjectMeta, err)
	rs, err := cs.AppsV1().ReplicaSets(ns).Create(ctx, &appsv1.ReplicaSet{ObjectMeta: metav1.ObjectMeta{Name: "rs"}, Spec: appsv1.ReplicaSetSpec{Selector: selector, Template: template}}, metav1.CreateOptions{})
	ref("ReplicaSet", "apps/v1", rs.ObjectMeta, err)
	sts, err := cs.AppsV1().StatefulSets(ns).Create(ctx, &appsv1.StatefulSet{ObjectMeta: metav1.ObjectMeta{Name: "sts"}, Spec: appsv1.StatefulSetSpec{Selector: selector, Template: template}}, metav1.CreateOptions{})
	ref("StatefulSet", "apps/v1", sts.ObjectMeta, err)
	ds, err := cs.AppsV1().DaemonSets(ns).Create(ctx, &appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Name: "ds"}, Spec: appsv1.DaemonSetSpec{Selector: selector, Template: template}}, metav1.CreateOptions{})
	ref("DaemonSet", "apps/v1", ds.ObjectMeta, err)
	return refs
}

// Own makes owner the controller of pod.
func Own(t testing.TB, cs kubernetes.Interface, pod *corev1.Pod, owner metav1.OwnerReference) *corev1.Pod {
	t.Helper()
	pod.OwnerReferences = []metav1.OwnerReference{owner}
	p, err := cs.CoreV1().Pods(pod.Namespace).Update(context.Background(), pod, metav1.UpdateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return p
}
