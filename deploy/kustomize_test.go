package deploy

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/kubernetes/scheme"
	crclient "sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"

	"github.com/lastgasp/lastgasp/internal/image"
	"github.com/lastgasp/lastgasp/internal/metrics"
	"github.com/lastgasp/lastgasp/internal/testrig/clustertest"
	"github.com/lastgasp/lastgasp/internal/testrig/testnet"
)

// prometheusOperator is the Prometheus Operator module whose CRDs
// (example/prometheus-operator-crd) the test installs.
const prometheusOperator = "github.com/prometheus-operator/prometheus-operator@v0.85.0"

// metricName finds lastgasp's metric names in a PromQL expression.
var metricName = regexp.MustCompile(`\blastgasp_[a-z0-9_]+`)

// TestKustomize renders deploy/ as kubectl apply -k does (kustomize's Go
// library), checks that it holds every object of lastgasp.yaml and of the
// components, that the alert rules cover what issue 14 asks with metric
// names that exist, and creates every rendered object in a real
// kube-apiserver with the Prometheus Operator's CRDs installed from its
// Go module, strict field validation on: a typo fails.
func TestKustomize(t *testing.T) {
	testnet.RequireRoot(t) // the control plane's cache
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	rendered, err := k.Run(filesys.MakeFsOnDisk(), ".")
	if err != nil {
		t.Fatalf("kustomize: %v", err)
	}
	var objs []*unstructured.Unstructured
	kinds := map[string]int{}
	for _, r := range rendered.Resources() {
		data, err := r.MarshalJSON()
		if err != nil {
			t.Fatal(err)
		}
		u := &unstructured.Unstructured{}
		if err := u.UnmarshalJSON(data); err != nil { // numbers as int64, as NestedSlice copies them
			t.Fatal(err)
		}
		objs = append(objs, u)
		kinds[u.GetKind()]++
	}
	want := len(load(t).objects) + len(decodeFile(t, agentFile)) + 4 + 1 // 2 PodMonitors, 1 PrometheusRule, the dashboard; the KernelCrash CRD
	if len(objs) != want || kinds["PodMonitor"] != 2 || kinds["PrometheusRule"] != 1 || kinds["DaemonSet"] != 2 || kinds["CustomResourceDefinition"] != 1 {
		t.Fatalf("rendered %d objects %v, want %d", len(objs), kinds, want)
	}

	// The config's ConfigMap is named by a hash of its contents, and the
	// collectors' DaemonSet mounts that name: a change rolls it.
	var cmName, mounted string
	for _, u := range objs {
		switch {
		case u.GetKind() == "ConfigMap" && strings.HasPrefix(u.GetName(), "lastgasp-config"):
			cmName = u.GetName()
		case u.GetKind() == "DaemonSet" && u.GetName() == "lastgasp":
			vols, _, _ := unstructured.NestedSlice(u.Object, "spec", "template", "spec", "volumes")
			for _, v := range vols {
				if name, ok, _ := unstructured.NestedString(v.(map[string]any), "configMap", "name"); ok {
					mounted = name
				}
			}
		}
	}
	if !strings.HasPrefix(cmName, "lastgasp-config-") || mounted != cmName {
		t.Errorf("ConfigMap %q, DaemonSet mounts %q: want one name with a hash", cmName, mounted)
	}

	// Both DaemonSets run the image make image writes.
	for _, u := range objs {
		if u.GetKind() != "DaemonSet" {
			continue
		}
		containers, _, _ := unstructured.NestedSlice(u.Object, "spec", "template", "spec", "containers")
		for _, c := range containers {
			if img := c.(map[string]any)["image"]; img != image.DefaultTag {
				t.Errorf("DaemonSet %s: image %v, want %s (make image)", u.GetName(), img, image.DefaultTag)
			}
		}
	}

	// The alerts, on metrics that exist.
	families := metrics.Families()
	var alerts []string
	for _, u := range objs {
		if u.GetKind() != "PrometheusRule" {
			continue
		}
		groups, _, _ := unstructured.NestedSlice(u.Object, "spec", "groups")
		for _, g := range groups {
			rules, _, _ := unstructured.NestedSlice(g.(map[string]any), "rules")
			for _, r := range rules {
				rule := r.(map[string]any)
				alerts = append(alerts, rule["alert"].(string))
				for _, name := range metricName.FindAllString(rule["expr"].(string), -1) {
					for _, suffix := range []string{"_bucket", "_sum", "_count"} {
						if f := strings.TrimSuffix(name, suffix); f != name && slices.Contains(families, f) {
							name = f
						}
					}
					if !slices.Contains(families, name) {
						t.Errorf("alert %s: no metric %s in internal/metrics", rule["alert"], name)
					}
				}
			}
		}
	}
	// The dashboard's queries, on metrics that exist too.
	var dashboard struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	data, err := os.ReadFile(filepath.Join(monitoringDir, "dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &dashboard); err != nil || len(dashboard.Panels) == 0 {
		t.Fatalf("dashboard.json: %v, %d panels", err, len(dashboard.Panels))
	}
	for _, p := range dashboard.Panels {
		for _, q := range p.Targets {
			for _, name := range metricName.FindAllString(q.Expr, -1) {
				if f := strings.TrimSuffix(name, "_bucket"); !slices.Contains(families, name) && !slices.Contains(families, f) {
					t.Errorf("dashboard panel %q: no metric %s in internal/metrics", p.Title, name)
				}
			}
		}
	}

	for _, a := range []string{"LastgaspKernelPanic", "LastgaspPanicUnconfirmed", "LastgaspForgedPanicRefused",
		"LastgaspRingBufferFull", "LastgaspLinesLost", "LastgaspDeletionCapHit", "LastgaspCollectorDown",
		"LastgaspNetconsoleSetupFailed", "LastgaspCollectorNotReady"} {
		if !slices.Contains(alerts, a) {
			t.Errorf("no alert %s", a)
		}
	}

	// The Prometheus Operator's CRDs, from its module.
	cp, _ := startControlPlane(t)
	out, err := exec.Command(filepath.Join(runtime.GOROOT(), "bin", "go"), "mod", "download", "-json", prometheusOperator).Output()
	if err != nil {
		t.Fatalf("go mod download %s: %v", prometheusOperator, err)
	}
	var mod struct{ Dir string }
	if err := json.Unmarshal(out, &mod); err != nil || mod.Dir == "" {
		t.Fatalf("go mod download %s: %s", prometheusOperator, out)
	}
	ctx := t.Context()
	c, err := crclient.New(cp.Config, crclient.Options{Scheme: scheme.Scheme})
	if err != nil {
		t.Fatal(err)
	}
	if err := apiextensionsv1.AddToScheme(c.Scheme()); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"podmonitors", "prometheusrules"} {
		var crd apiextensionsv1.CustomResourceDefinition
		for _, doc := range decodeYAMLFile(t, filepath.Join(mod.Dir, "example", "prometheus-operator-crd", "monitoring.coreos.com_"+name+".yaml")) {
			if err := yaml.Unmarshal(doc, &crd); err != nil {
				t.Fatal(err)
			}
		}
		if err := c.Create(ctx, &crd); err != nil {
			t.Fatalf("create CRD %s: %v", crd.Name, err)
		}
		clustertest.Eventually(t, 30*time.Second, "CRD "+crd.Name+" established", func() bool {
			var got apiextensionsv1.CustomResourceDefinition
			if err := c.Get(ctx, crclient.ObjectKey{Name: crd.Name}, &got); err != nil {
				return false
			}
			for _, cond := range got.Status.Conditions {
				if cond.Type == apiextensionsv1.Established && cond.Status == apiextensionsv1.ConditionTrue {
					return true
				}
			}
			return false
		})
	}
	// A client made now knows the new kinds.
	c, err = crclient.New(cp.Config, crclient.Options{Scheme: scheme.Scheme})
	if err != nil {
		t.Fatal(err)
	}
	clustertest.Eventually(t, 30*time.Second, "namespace kube-node-lease", func() bool {
		var ns unstructured.Unstructured
		ns.SetAPIVersion("v1")
		ns.SetKind("Namespace")
		return c.Get(ctx, crclient.ObjectKey{Name: "kube-node-lease"}, &ns) == nil
	})
	for _, u := range objs {
		if err := c.Create(ctx, u, crclient.FieldValidation(metav1.FieldValidationStrict)); err != nil {
			t.Errorf("create %s %s: %v", u.GetKind(), crclient.ObjectKeyFromObject(u), err)
		}
	}
}

// decodeYAMLFile returns a YAML file's documents.
func decodeYAMLFile(t *testing.T, path string) [][]byte {
	t.Helper()
	out, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	var docs [][]byte
	for _, d := range strings.Split(string(out), "\n---") {
		if strings.TrimSpace(d) != "" {
			docs = append(docs, []byte(d))
		}
	}
	return docs
}

// monitoringDir holds the alert rules and their promtool tests.
const monitoringDir = "components/monitoring"

// TestAlertRules runs promtool's unit tests of the alert rules
// (components/monitoring/rules-test.yaml) on the groups of the
// PrometheusRule, written as a plain rule file: each alert fires on what it
// is for, with its labels and summary, and stays quiet otherwise.
func TestAlertRules(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("skipped: no promtool (apt-get install prometheus; make deps does)")
	}
	var rule struct {
		Spec struct {
			Groups []any `json:"groups"`
		} `json:"spec"`
	}
	data, err := os.ReadFile(filepath.Join(monitoringDir, "rules.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(data, &rule); err != nil {
		t.Fatalf("rules.yaml: %v", err)
	}
	dir := t.TempDir()
	groups, err := yaml.Marshal(map[string]any{"groups": rule.Spec.Groups})
	if err != nil {
		t.Fatal(err)
	}
	tests, err := os.ReadFile(filepath.Join(monitoringDir, "rules-test.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for name, content := range map[string][]byte{"rules.yaml": groups, "rules-test.yaml": tests} {
		if err := os.WriteFile(filepath.Join(dir, name), content, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(promtool, "test", "rules", "rules-test.yaml")
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("promtool test rules: %v\n%s", err, out)
	}
	t.Logf("%s", out)
}
