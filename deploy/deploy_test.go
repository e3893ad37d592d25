package deploy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	appsv1 "k8s.io/api/apps/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	crclient "sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/lastgasp/lastgasp/internal/cleanup"
	"github.com/lastgasp/lastgasp/internal/crashrecord"
	"github.com/lastgasp/lastgasp/internal/detect"
	"github.com/lastgasp/lastgasp/internal/liveness"
	"github.com/lastgasp/lastgasp/internal/nodeindex"
	"github.com/lastgasp/lastgasp/internal/pattern"
	"github.com/lastgasp/lastgasp/internal/storm"
	"github.com/lastgasp/lastgasp/internal/testrig/clustertest"
	"github.com/lastgasp/lastgasp/internal/testrig/controlplane"
	"github.com/lastgasp/lastgasp/internal/testrig/testnet"
)

// manifestFile is the file under test.
const manifestFile = "lastgasp.yaml"

// configFile is the collector's config file, the ConfigMap's data.
const configFile = "config.yaml"

// configKey is the ConfigMap key that holds the config file.
const configKey = "config.yaml"

// manifests is lastgasp.yaml, decoded.
type manifests struct {
	objects     []runtime.Object // in file order
	namespace   *corev1.Namespace
	account     *corev1.ServiceAccount
	clusterRole *rbacv1.ClusterRole
	clusterBind *rbacv1.ClusterRoleBinding
	leaseRole   *rbacv1.Role // in kube-node-lease
	leaseBind   *rbacv1.RoleBinding
	brakeRole   *rbacv1.Role // in lastgasp's namespace: the brake Lease
	brakeBind   *rbacv1.RoleBinding
	brakeLease  *coordinationv1.Lease
	config      *corev1.ConfigMap
	daemonSet   *appsv1.DaemonSet
}

// load decodes every document of lastgasp.yaml strictly: an unknown or
// repeated field is an error, not silently dropped.
func load(t *testing.T) *manifests {
	t.Helper()
	m := &manifests{}
	for i, obj := range decodeFile(t, manifestFile) {
		doc := i + 1
		m.objects = append(m.objects, obj)
		var dup bool
		switch o := obj.(type) {
		case *corev1.Namespace:
			dup, m.namespace = m.namespace != nil, o
		case *corev1.ServiceAccount:
			dup, m.account = m.account != nil, o
		case *rbacv1.ClusterRole:
			dup, m.clusterRole = m.clusterRole != nil, o
		case *rbacv1.ClusterRoleBinding:
			dup, m.clusterBind = m.clusterBind != nil, o
		case *rbacv1.Role:
			if o.Namespace == corev1.NamespaceNodeLease {
				dup, m.leaseRole = m.leaseRole != nil, o
			} else {
				dup, m.brakeRole = m.brakeRole != nil, o
			}
		case *rbacv1.RoleBinding:
			if o.Namespace == corev1.NamespaceNodeLease {
				dup, m.leaseBind = m.leaseBind != nil, o
			} else {
				dup, m.brakeBind = m.brakeBind != nil, o
			}
		case *coordinationv1.Lease:
			dup, m.brakeLease = m.brakeLease != nil, o
		case *corev1.ConfigMap:
			dup, m.config = m.config != nil, o
		case *appsv1.DaemonSet:
			dup, m.daemonSet = m.daemonSet != nil, o
		default:
			t.Fatalf("%s, object %d: unexpected %T", manifestFile, doc, obj)
		}
		if dup {
			t.Fatalf("%s, object %d: a second %T", manifestFile, doc, obj)
		}
	}
	// The ConfigMap kustomization.yaml generates from config.yaml, named
	// as the DaemonSet's volume names it (kustomize adds the hash).
	if m.daemonSet != nil && m.config == nil {
		data, err := os.ReadFile(configFile)
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range m.daemonSet.Spec.Template.Spec.Volumes {
			if v.ConfigMap != nil {
				m.config = &corev1.ConfigMap{
					TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "ConfigMap"},
					ObjectMeta: metav1.ObjectMeta{Name: v.ConfigMap.Name, Namespace: m.daemonSet.Namespace,
						Labels: map[string]string{"app.kubernetes.io/name": "lastgasp"}},
					Data: map[string]string{configKey: string(data)},
				}
				m.objects = slices.Insert(m.objects, len(m.objects)-1, runtime.Object(m.config))
			}
		}
	}
	if m.namespace == nil || m.account == nil || m.clusterRole == nil || m.clusterBind == nil ||
		m.leaseRole == nil || m.leaseBind == nil || m.brakeRole == nil || m.brakeBind == nil || m.brakeLease == nil ||
		m.config == nil || m.daemonSet == nil {
		t.Fatalf("%s: an object is missing: %+v", manifestFile, m)
	}
	return m
}

// decodeFile decodes every document of a manifest file strictly: an
// unknown or repeated field is an error, not silently dropped.
func decodeFile(t *testing.T, file string) []runtime.Object {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatalf("read manifests: %v", err)
	}
	decoder := serializer.NewCodecFactory(scheme.Scheme, serializer.EnableStrict).UniversalDeserializer()
	reader := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var out []runtime.Object
	for doc := 1; ; doc++ {
		raw, err := reader.Read()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("read %s, document %d: %v", file, doc, err)
		}
		if onlyComments(raw) {
			continue
		}
		obj, _, err := decoder.Decode(raw, nil, nil)
		if err != nil {
			t.Fatalf("decode %s, document %d: %v", file, doc, err)
		}
		out = append(out, obj)
	}
}

// onlyComments reports whether a YAML document holds nothing but comments.
func onlyComments(doc []byte) bool {
	for _, line := range strings.Split(string(doc), "\n") {
		if line = strings.TrimSpace(line); line != "" && line != "---" && !strings.HasPrefix(line, "#") {
			return false
		}
	}
	return true
}

// container is the DaemonSet's one container.
func (m *manifests) container(t *testing.T) *corev1.Container {
	t.Helper()
	if n := len(m.daemonSet.Spec.Template.Spec.Containers); n != 1 {
		t.Fatalf("DaemonSet: %d containers, want 1", n)
	}
	return &m.daemonSet.Spec.Template.Spec.Containers[0]
}

// flagValue returns the value of --name in args (--name=value or --name
// value), and whether it is there.
func flagValue(args []string, name string) (string, bool) {
	for i, a := range args {
		if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
			return v, true
		}
		if a == "--"+name && i+1 < len(args) {
			return args[i+1], true
		}
	}
	return "", false
}

// mountFor returns the container's mount that path is under, and its
// volume.
func mountFor(t *testing.T, m *manifests, path string) (*corev1.VolumeMount, *corev1.Volume) {
	t.Helper()
	c := m.container(t)
	var best *corev1.VolumeMount
	for i, vm := range c.VolumeMounts {
		if (path == vm.MountPath || strings.HasPrefix(path, vm.MountPath+"/")) && (best == nil || len(vm.MountPath) > len(best.MountPath)) {
			best = &c.VolumeMounts[i]
		}
	}
	if best == nil {
		t.Fatalf("%s: under no volume mount", path)
	}
	for i, v := range m.daemonSet.Spec.Template.Spec.Volumes {
		if v.Name == best.Name {
			return best, &m.daemonSet.Spec.Template.Spec.Volumes[i]
		}
	}
	t.Fatalf("volume mount %s: no volume %q", best.MountPath, best.Name)
	return nil, nil
}

// TestManifests checks what can be checked without a cluster: the objects
// refer to each other correctly, and the paths and ports on the command
// line are the ones the pod spec mounts and probes.
func TestManifests(t *testing.T) {
	m := load(t)
	if _, ok := m.objects[0].(*corev1.Namespace); !ok {
		t.Errorf("the first object is a %T: the Namespace must come first", m.objects[0])
	}
	ns := m.namespace.Name
	for _, obj := range []metav1.Object{m.account, m.config, m.daemonSet, m.brakeRole, m.brakeBind, m.brakeLease} {
		if obj.GetNamespace() != ns {
			t.Errorf("%s: namespace %q, want %q", obj.GetName(), obj.GetNamespace(), ns)
		}
	}
	for _, obj := range []metav1.Object{m.leaseRole, m.leaseBind} {
		if obj.GetNamespace() != corev1.NamespaceNodeLease {
			t.Errorf("%s: namespace %q, want %q", obj.GetName(), obj.GetNamespace(), corev1.NamespaceNodeLease)
		}
	}

	// The bindings give the roles to the ServiceAccount the pods run as.
	subject := rbacv1.Subject{Kind: rbacv1.ServiceAccountKind, Name: m.account.Name, Namespace: ns}
	if ref := m.clusterBind.RoleRef; ref.Kind != "ClusterRole" || ref.Name != m.clusterRole.Name || !slices.Equal(m.clusterBind.Subjects, []rbacv1.Subject{subject}) {
		t.Errorf("ClusterRoleBinding %+v %+v", ref, m.clusterBind.Subjects)
	}
	if ref := m.leaseBind.RoleRef; ref.Kind != "Role" || ref.Name != m.leaseRole.Name || !slices.Equal(m.leaseBind.Subjects, []rbacv1.Subject{subject}) {
		t.Errorf("RoleBinding %+v %+v", ref, m.leaseBind.Subjects)
	}
	if ref := m.brakeBind.RoleRef; ref.Kind != "Role" || ref.Name != m.brakeRole.Name || !slices.Equal(m.brakeBind.Subjects, []rbacv1.Subject{subject}) {
		t.Errorf("brake RoleBinding %+v %+v", ref, m.brakeBind.Subjects)
	}
	pod := m.daemonSet.Spec.Template.Spec
	if pod.ServiceAccountName != m.account.Name {
		t.Errorf("DaemonSet runs as %q, want %q", pod.ServiceAccountName, m.account.Name)
	}

	// Exactly these rights, each derived from a call in cleanup/,
	// liveness/ or nodeindex/ (see the comments in lastgasp.yaml). A
	// change here is a change of what lastgasp may do: TestCluster proves
	// it is enough, and this that it is no more.
	wantCluster := map[string][]string{
		"nodes":       {"delete", "list", "patch", "watch"},
		"pods":        {"delete", "list", "watch"},
		"pods/status": {"patch"},
		"events":      {"create"},
	}
	var coreRules, recordRules []rbacv1.PolicyRule
	for _, r := range m.clusterRole.Rules {
		if slices.Equal(r.APIGroups, []string{"lastgasp.io"}) {
			recordRules = append(recordRules, r)
		} else {
			coreRules = append(coreRules, r)
		}
	}
	if got := ruleTable(t, coreRules, ""); !equalTables(got, wantCluster) {
		t.Errorf("ClusterRole rules %v, want %v", got, wantCluster)
	}
	// The KernelCrash records: written pending, read and patched to be
	// final, listed and deleted to prune, listed and patched for storms.
	wantRecords := map[string][]string{"kernelcrashes": {"create", "delete", "get", "list", "patch"}}
	if got := ruleTable(t, recordRules, "lastgasp.io"); !equalTables(got, wantRecords) {
		t.Errorf("ClusterRole rules for lastgasp.io %v, want %v", got, wantRecords)
	}
	wantLease := map[string][]string{"leases": {"get"}}
	if got := ruleTable(t, m.leaseRole.Rules, "coordination.k8s.io"); !equalTables(got, wantLease) {
		t.Errorf("Role rules %v, want %v", got, wantLease)
	}
	// The brake: get and update of its one Lease, by name; the collectors
	// are told its name.
	wantBrake := []rbacv1.PolicyRule{{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, ResourceNames: []string{m.brakeLease.Name}, Verbs: []string{"get", "update"}}}
	if !reflect.DeepEqual(m.brakeRole.Rules, wantBrake) {
		t.Errorf("brake Role rules %+v, want %+v", m.brakeRole.Rules, wantBrake)
	}
	var config map[string]any
	if err := utilyaml.Unmarshal([]byte(m.config.Data[configKey]), &config); err != nil {
		t.Fatal(err)
	}
	if want := m.brakeLease.Namespace + "/" + m.brakeLease.Name; config["brake-lease"] != want {
		t.Errorf("config brake-lease %v, want %s", config["brake-lease"], want)
	}

	c := m.container(t)
	// --config names a key of the ConfigMap, mounted.
	cfgPath, ok := flagValue(c.Args, "config")
	if !ok {
		t.Fatal("no --config on the command line")
	}
	if _, vol := mountFor(t, m, cfgPath); vol.ConfigMap == nil || vol.ConfigMap.Name != m.config.Name || filepath.Base(cfgPath) != configKey {
		t.Errorf("--config %s: not the ConfigMap %s's %s", cfgPath, m.config.Name, configKey)
	}
	if _, ok := m.config.Data[configKey]; !ok {
		t.Errorf("ConfigMap: no %s", configKey)
	}
	// --pin-path is on the host's bpffs, --journal on a host directory,
	// writable: both outlive the pod.
	for flag, hostDir := range map[string]string{"pin-path": "/sys/fs/bpf", "journal": "/var/lib/lastgasp"} {
		path, ok := flagValue(c.Args, flag)
		if !ok {
			t.Errorf("no --%s on the command line", flag)
			continue
		}
		vm, vol := mountFor(t, m, path)
		if vol.HostPath == nil || vol.HostPath.Path != hostDir || vm.ReadOnly {
			t.Errorf("--%s %s: not on a writable mount of the host's %s", flag, path, hostDir)
		}
	}
	// The probes and the "metrics" port are where --metrics-addr listens.
	addr, ok := flagValue(c.Args, "metrics-addr")
	if !ok {
		t.Fatal("no --metrics-addr on the command line")
	}
	_, portText, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("--metrics-addr %s: %v", addr, err)
	}
	var metricsPort int32
	for _, p := range c.Ports {
		if p.Name == "metrics" {
			metricsPort = p.ContainerPort
		}
	}
	if strconv.Itoa(int(metricsPort)) != portText {
		t.Errorf("port metrics %d, --metrics-addr %s", metricsPort, addr)
	}
	for name, probe := range map[string]*corev1.Probe{"liveness": c.LivenessProbe, "readiness": c.ReadinessProbe} {
		if probe == nil || probe.HTTPGet == nil || probe.HTTPGet.Port.String() != "metrics" {
			t.Errorf("%s probe %+v: want an HTTP GET on the metrics port", name, probe)
		}
	}

	// The pod lands on collector nodes: the label it selects, the taint
	// (deploy/README.md) it tolerates.
	if pod.NodeSelector[collectorLabel] != "true" {
		t.Errorf("nodeSelector %v", pod.NodeSelector)
	}
	if !tolerates(pod.Tolerations, collectorTaint) {
		t.Errorf("tolerations %+v do not tolerate %+v", pod.Tolerations, collectorTaint)
	}
	if sc := c.SecurityContext; sc == nil || sc.Privileged == nil || *sc.Privileged || sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Errorf("securityContext %+v: want unprivileged, every capability dropped but those added", sc)
	}
}

// ruleTable turns rules of one API group into resource → sorted verbs,
// failing on rules that name resources or another group.
func ruleTable(t *testing.T, rules []rbacv1.PolicyRule, group string) map[string][]string {
	t.Helper()
	table := map[string][]string{}
	for _, r := range rules {
		if !slices.Equal(r.APIGroups, []string{group}) || len(r.ResourceNames) > 0 || len(r.NonResourceURLs) > 0 {
			t.Errorf("rule %+v: want API group %q only, no resource names or URLs", r, group)
		}
		for _, res := range r.Resources {
			table[res] = append(table[res], r.Verbs...)
			sort.Strings(table[res])
		}
	}
	return table
}

func equalTables(a, b map[string][]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if !slices.Equal(v, b[k]) {
			return false
		}
	}
	return true
}

// The label and taint of a collector node (deploy/README.md).
const collectorLabel = "lastgasp.io/collector"

var collectorTaint = corev1.Taint{Key: collectorLabel, Value: "true", Effect: corev1.TaintEffectNoSchedule}

// tolerates reports whether one of tols tolerates taint, by the
// Kubernetes rules for the Equal and Exists operators.
func tolerates(tols []corev1.Toleration, taint corev1.Taint) bool {
	for _, tol := range tols {
		if tol.Effect != "" && tol.Effect != taint.Effect {
			continue
		}
		if tol.Key != "" && tol.Key != taint.Key {
			continue
		}
		switch tol.Operator {
		case corev1.TolerationOpExists:
			return true
		case corev1.TolerationOpEqual, "":
			if tol.Value == taint.Value {
				return true
			}
		}
	}
	return false
}

// binary is the lastgasp command, built once for the tests that run it.
var binary struct {
	once sync.Once
	dir  string
	path string
	err  error
}

// lastgaspBinary builds cmd/lastgasp (once) and returns its path.
func lastgaspBinary(t *testing.T) string {
	t.Helper()
	binary.once.Do(func() {
		binary.dir, binary.err = os.MkdirTemp("", "lastgasp-deploy-test-")
		if binary.err != nil {
			return
		}
		binary.path = filepath.Join(binary.dir, "lastgasp")
		out, err := exec.Command("go", "build", "-o", binary.path, "github.com/lastgasp/lastgasp/cmd/lastgasp").CombinedOutput()
		if err != nil {
			binary.err = fmt.Errorf("build lastgasp: %w\n%s", err, out)
		}
	})
	if binary.err != nil {
		t.Fatal(binary.err)
	}
	return binary.path
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binary.dir != "" {
		os.RemoveAll(binary.dir)
	}
	os.Exit(code)
}

// runFlags returns the flags of `lastgasp run`, by name, with their
// defaults as -h prints them ("" when it prints none).
func runFlags(t *testing.T) map[string]string {
	t.Helper()
	out, err := exec.Command(lastgaspBinary(t), "run", "-h").CombinedOutput()
	if err != nil {
		t.Fatalf("lastgasp run -h: %v\n%s", err, out)
	}
	flagLine := regexp.MustCompile(`^  -([a-z0-9-]+)`)
	defaultIs := regexp.MustCompile(`\(default ([^)]*)\)`)
	flags := map[string]string{}
	var current string
	for _, line := range strings.Split(string(out), "\n") {
		if f := flagLine.FindStringSubmatch(line); f != nil {
			current = f[1]
			flags[current] = ""
		}
		if d := defaultIs.FindStringSubmatch(line); d != nil && current != "" {
			flags[current] = d[1]
		}
	}
	if len(flags) == 0 {
		t.Fatalf("lastgasp run -h: no flags found in\n%s", out)
	}
	return flags
}

// TestRunFlags checks the manifests against the real command: every key
// of the config file and every flag on the DaemonSet's command line is a
// flag of `lastgasp run`, and the grace period outlasts the command's own
// shutdown grace.
func TestRunFlags(t *testing.T) {
	m := load(t)
	flags := runFlags(t)
	var config map[string]any
	if err := utilyaml.Unmarshal([]byte(m.config.Data[configKey]), &config); err != nil {
		t.Fatalf("ConfigMap %s: %v", configKey, err)
	}
	for key := range config {
		if _, ok := flags[key]; !ok || key == "config" {
			t.Errorf("ConfigMap %s: key %q is not a flag of lastgasp run", configKey, key)
		}
	}
	c := m.container(t)
	if len(c.Args) == 0 || c.Args[0] != "run" {
		t.Fatalf("args %q: want lastgasp run", c.Args)
	}
	for _, arg := range c.Args[1:] {
		name, _, _ := strings.Cut(strings.TrimLeft(arg, "-"), "=")
		if _, ok := flags[name]; !ok || !strings.HasPrefix(arg, "--") {
			t.Errorf("arg %q: not a flag of lastgasp run", arg)
		}
		if _, inConfig := config[name]; inConfig {
			t.Errorf("--%s is both on the command line and in the config file", name)
		}
	}

	grace := flags["shutdown-grace"]
	if v, ok := config["shutdown-grace"].(string); ok {
		grace = v
	}
	d, err := time.ParseDuration(grace)
	if err != nil {
		t.Fatalf("--shutdown-grace %q: %v", grace, err)
	}
	if p := m.daemonSet.Spec.Template.Spec.TerminationGracePeriodSeconds; p == nil || time.Duration(*p)*time.Second <= d {
		t.Errorf("terminationGracePeriodSeconds %v: must exceed --shutdown-grace %v", p, d)
	}
}

// TestCapabilities runs the real lastgasp binary, as root but with only
// the capabilities the DaemonSet's container adds (every other one dropped,
// no privilege escalation), with the container's own arguments and config
// file: the XDP program loads, attaches natively to a veth, pins its maps
// and link on bpffs, serves /readyz, and a second run takes the pinned
// link over. Then, without each of those capabilities in turn, it fails
// for want of permission: each is needed.
func TestCapabilities(t *testing.T) {
	testnet.RequireRoot(t)
	for _, tool := range []string{"setpriv", "nsenter"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("skipped: needs %s (util-linux) to run lastgasp with chosen capabilities", tool)
		}
	}
	var fs unix.Statfs_t
	if err := unix.Statfs("/sys/fs/bpf", &fs); err != nil || fs.Type != unix.BPF_FS_MAGIC {
		t.Skip("skipped: no bpffs at /sys/fs/bpf (mount -t bpf bpf /sys/fs/bpf)")
	}
	m := load(t)
	c := m.container(t)
	if c.SecurityContext == nil || c.SecurityContext.Capabilities == nil {
		t.Fatal("the container adds no capabilities")
	}
	var caps []string
	for _, name := range c.SecurityContext.Capabilities.Add {
		caps = append(caps, strings.ToLower(strings.TrimPrefix(string(name), "CAP_")))
	}
	bin := lastgaspBinary(t)
	pair := testnet.NewPair(t)

	dir := t.TempDir()
	configFile := filepath.Join(dir, configKey)
	if err := os.WriteFile(configFile, []byte(m.config.Data[configKey]), 0o600); err != nil {
		t.Fatal(err)
	}
	metrics, _ := flagValue(c.Args, "metrics-addr")
	_, port, _ := net.SplitHostPort(metrics)
	readyz := "http://" + net.JoinHostPort("127.0.0.1", port) + "/readyz"

	// The container's arguments, with its paths moved into the test's own,
	// on the veth, and nothing written to a cluster.
	args := func(pinPath string) []string {
		out := []string{c.Args[0]}
		for _, a := range c.Args[1:] {
			name, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
			switch name {
			case "config":
				a = "--config=" + configFile
			case "pin-path":
				a = "--pin-path=" + pinPath
			case "journal":
				a = "--journal=" + filepath.Join(dir, "journal")
			}
			out = append(out, a)
		}
		return append(out, "--interface="+pair.Collector.Ifname, "--report-only")
	}
	pinPath := func(what string) string {
		p := filepath.Join("/sys/fs/bpf", "lastgasp-deploy-test-"+randomHex()+"-"+what)
		t.Cleanup(func() { os.RemoveAll(p) })
		return p
	}

	pins := pinPath("all")
	first := startLimited(t, pair, caps, bin, args(pins)...)
	waitReady(t, pair, readyz, first)
	// nsenter and setpriv exec: the pid is lastgasp's. It holds these
	// capabilities and no other.
	if got, want := effectiveCaps(t, first.cmd.Process.Pid), capMask(t, caps); got != want {
		t.Errorf("lastgasp ran with capabilities %#x, want %#x", got, want)
	}
	t.Logf("ready with CAP_%s only: %s", strings.ToUpper(strings.Join(caps, ", CAP_")), lineWith(first.out.String(), "attached XDP program"))
	for _, name := range []string{"link_" + pair.Collector.Ifname, "events", "bursts"} {
		if _, err := os.Stat(filepath.Join(pins, name)); err != nil {
			t.Errorf("not pinned: %v", err)
		}
	}
	first.stop(t)

	second := startLimited(t, pair, caps, bin, args(pins)...)
	waitReady(t, pair, readyz, second)
	second.stop(t)
	// loader's words for a restart that kept the attached program.
	if !strings.Contains(second.out.String(), "took over pinned XDP link") {
		t.Errorf("the second run did not take the pinned link over:\n%s", second.out.String())
	}
	// Unpinned, the link goes, and with it the program: the runs below
	// start from a bare interface.
	if err := os.RemoveAll(pins); err != nil {
		t.Fatal(err)
	}

	for _, without := range caps {
		t.Run("without "+without, func(t *testing.T) {
			var fewer []string
			for _, name := range caps {
				if name != without {
					fewer = append(fewer, name)
				}
			}
			r := startLimited(t, pair, fewer, bin, args(pinPath("no-"+without))...)
			select {
			case <-r.exited:
				out := r.out.String()
				if r.err == nil {
					t.Fatalf("exited 0 without CAP_%s:\n%s", strings.ToUpper(without), out)
				}
				if !strings.Contains(out, "not permitted") && !strings.Contains(out, "permission denied") {
					t.Errorf("without CAP_%s it failed, but not for want of permission:\n%s", strings.ToUpper(without), out)
				}
				t.Logf("without CAP_%s: %s", strings.ToUpper(without), lineWith(out, "not permitted", "permission denied"))
			case <-time.After(20 * time.Second):
				r.stop(t)
				t.Fatalf("still running after 20s without CAP_%s:\n%s", strings.ToUpper(without), r.out.String())
			}
		})
	}
}

// lineWith returns the first line of s that holds what, shortened.
func lineWith(s string, what ...string) string {
	for _, line := range strings.Split(s, "\n") {
		for _, w := range what {
			if strings.Contains(line, w) {
				if len(line) > 300 {
					line = line[:300] + "…"
				}
				return line
			}
		}
	}
	return ""
}

// capNumbers are the capabilities this test knows by name.
var capNumbers = map[string]int{
	"bpf": unix.CAP_BPF, "net_admin": unix.CAP_NET_ADMIN, "perfmon": unix.CAP_PERFMON,
	"sys_admin": unix.CAP_SYS_ADMIN, "sys_resource": unix.CAP_SYS_RESOURCE, "net_raw": unix.CAP_NET_RAW,
}

// capMask is the capability set of those names.
func capMask(t *testing.T, caps []string) uint64 {
	t.Helper()
	var mask uint64
	for _, c := range caps {
		n, ok := capNumbers[c]
		if !ok {
			t.Fatalf("capability %q: unknown to this test (add it to capNumbers)", c)
		}
		mask |= 1 << n
	}
	return mask
}

// effectiveCaps reads a process's effective capability set.
func effectiveCaps(t *testing.T, pid int) uint64 {
	t.Helper()
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			mask, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				t.Fatalf("CapEff %q: %v", v, err)
			}
			return mask
		}
	}
	t.Fatalf("/proc/%d/status: no CapEff", pid)
	return 0
}

// limited is lastgasp running with chosen capabilities.
type limited struct {
	cmd    *exec.Cmd
	out    *lockedBuffer
	exited chan struct{} // closed when it has exited, err set
	err    error
}

// startLimited runs bin in the pair's collector network namespace as root
// with no capabilities but caps (names without CAP_, lower case), as the
// container runtime would: the bounding set holds only those (so they are
// all root has after exec), and no_new_privs is set
// (allowPrivilegeEscalation: false).
func startLimited(t *testing.T, pair *testnet.Pair, caps []string, bin string, args ...string) *limited {
	t.Helper()
	bounding := "-all"
	for _, c := range caps {
		bounding += ",+" + c
	}
	argv := append([]string{"--net=" + pair.Collector.Netns.Path(), "--",
		"setpriv", "--bounding-set=" + bounding, "--inh-caps=-all", "--no-new-privs", "--",
		bin}, args...)
	r := &limited{cmd: exec.Command("nsenter", argv...), out: &lockedBuffer{}, exited: make(chan struct{})}
	r.cmd.Stdout, r.cmd.Stderr = r.out, r.out
	if err := r.cmd.Start(); err != nil {
		t.Fatalf("start lastgasp: %v", err)
	}
	go func() { r.err = r.cmd.Wait(); close(r.exited) }()
	t.Cleanup(func() {
		select {
		case <-r.exited:
		default:
			r.cmd.Process.Kill()
			<-r.exited
		}
	})
	return r
}

// stop sends SIGTERM, as the kubelet does, and expects a clean exit.
func (r *limited) stop(t *testing.T) {
	t.Helper()
	r.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-r.exited:
		if r.err != nil {
			t.Errorf("lastgasp exited: %v\n%s", r.err, r.out.String())
		}
	case <-time.After(40 * time.Second):
		r.cmd.Process.Kill()
		t.Errorf("lastgasp did not stop on SIGTERM:\n%s", r.out.String())
	}
}

// waitReady polls /readyz in the collector's namespace until it answers
// 200, failing if lastgasp exits first.
func waitReady(t *testing.T, pair *testnet.Pair, url string, r *limited) {
	t.Helper()
	dial := func(ctx context.Context, network, addr string) (conn net.Conn, err error) {
		err = pair.Collector.Netns.Do(func() error {
			conn, err = (&net.Dialer{}).DialContext(ctx, network, addr)
			return err
		})
		return conn, err
	}
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DialContext: dial, DisableKeepAlives: true}}
	deadline := time.Now().Add(20 * time.Second)
	for {
		select {
		case <-r.exited:
			t.Fatalf("lastgasp exited before it was ready (%v):\n%s", r.err, r.out.String())
		default:
		}
		if resp, err := client.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never answered 200:\n%s", url, r.out.String())
		}
		time.Sleep(100 * time.Millisecond) // the process gives no other signal
	}
}

// lockedBuffer is a bytes.Buffer safe for a process's output and a test
// reading it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func randomHex() string {
	b := make([]byte, 3)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// TestCluster creates every object of lastgasp.yaml in a real
// kube-apiserver (RBAC authorization, as envtest starts it), then proves:
// the real DaemonSet controller puts a collector pod on a collector node
// and nowhere else; lastgasp's own cleanup controller and liveness prober,
// under the ServiceAccount's token, clean up a dead node and report a
// non-fatal incident twice (the second Event already there), with not one
// call refused; and that the ServiceAccount may do nothing else.
func TestCluster(t *testing.T) {
	testnet.RequireRoot(t) // the control plane's cache and the probe's namespaces
	m := load(t)
	cp, admin := startControlPlane(t)

	t.Run("create", func(t *testing.T) { create(t, cp, admin, m) })
	if t.Failed() {
		return
	}
	sa, saConfig := serviceAccountClient(t, cp, admin, m.account)
	t.Run("daemonset on collector nodes only", func(t *testing.T) { daemonSetPlacement(t, cp, admin, m) })
	t.Run("rbac allows what lastgasp does", func(t *testing.T) { rbacAllows(t, cp, admin, sa, saConfig, m) })
	t.Run("rbac allows nothing else", func(t *testing.T) { rbacAllowsNothingElse(t, admin, sa, m) })
}

// startControlPlane starts a control plane, stopped when the test ends,
// and returns it with an administrator's client.
func startControlPlane(t *testing.T) (*controlplane.ControlPlane, kubernetes.Interface) {
	t.Helper()
	cp, err := controlplane.Start(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := cp.Stop(); err != nil {
			t.Errorf("stop control plane: %v", err)
		}
	})
	admin, err := cp.Client()
	if err != nil {
		t.Fatal(err)
	}
	return cp, admin
}

// create creates every object, in file order, as an administrator would
// with kubectl apply: really, not as a dry run.
func create(t *testing.T, cp *controlplane.ControlPlane, admin kubernetes.Interface, m *manifests) {
	ctx := t.Context()
	// kube-node-lease, where the lease Role goes, is made by the API
	// server itself, shortly after it starts.
	clustertest.Eventually(t, 30*time.Second, "namespace kube-node-lease never appeared", func() bool {
		_, err := admin.CoreV1().Namespaces().Get(ctx, corev1.NamespaceNodeLease, metav1.GetOptions{})
		return err == nil
	})
	c, err := crclient.New(cp.Config, crclient.Options{Scheme: scheme.Scheme})
	if err != nil {
		t.Fatalf("client: %v", err)
	}
	for _, obj := range m.objects {
		o := obj.(crclient.Object)
		kind := obj.GetObjectKind().GroupVersionKind().Kind // Create clears it
		if err := c.Create(ctx, o, crclient.FieldValidation(metav1.FieldValidationStrict)); err != nil {
			t.Fatalf("create %s %s: %v", kind, crclient.ObjectKeyFromObject(o), err)
		}
		t.Logf("created %s %s", kind, crclient.ObjectKeyFromObject(o))
	}
}

// serviceAccountClient returns a client with the identity a collector pod
// has: a token of the ServiceAccount from the TokenRequest API, as the
// kubelet mounts one, checked to authenticate as that ServiceAccount.
func serviceAccountClient(t *testing.T, cp *controlplane.ControlPlane, admin kubernetes.Interface, account *corev1.ServiceAccount) (kubernetes.Interface, *rest.Config) {
	t.Helper()
	ctx := t.Context()
	expiry := int64(3600)
	tr, err := admin.CoreV1().ServiceAccounts(account.Namespace).CreateToken(ctx, account.Name,
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &expiry}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("token for the ServiceAccount: %v", err)
	}
	cfg := rest.AnonymousClientConfig(cp.Config)
	cfg.BearerToken = tr.Status.Token
	cfg.QPS, cfg.Burst = cp.Config.QPS, cp.Config.Burst
	sa, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatalf("client: %v", err)
	}
	review, err := sa.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("who am I: %v", err)
	}
	if want := "system:serviceaccount:" + account.Namespace + ":" + account.Name; review.Status.UserInfo.Username != want {
		t.Fatalf("the token authenticates as %q, want %q", review.Status.UserInfo.Username, want)
	}
	t.Logf("acting as %s, groups %v", review.Status.UserInfo.Username, review.Status.UserInfo.Groups)
	return sa, cfg
}

// daemonSetPlacement runs the real DaemonSet controller: of a collector
// node (labelled and tainted as deploy/README.md says) and an ordinary
// node, only the collector gets a pod, admitted at system-node-critical
// priority in the lastgasp namespace.
func daemonSetPlacement(t *testing.T, cp *controlplane.ControlPlane, admin kubernetes.Interface, m *manifests) {
	ctx := t.Context()
	collector, err := admin.CoreV1().Nodes().Create(ctx, &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: "collector-1", Labels: map[string]string{collectorLabel: "true"}},
		Spec:       corev1.NodeSpec{Taints: []corev1.Taint{collectorTaint}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	worker, err := admin.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "worker-1"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// The API server gives a new Node the taint node.kubernetes.io/not-ready,
	// which the node lifecycle controller lifts once the kubelet reports
	// Ready. No kubelet here: lift it as that controller would.
	for _, n := range []*corev1.Node{collector, worker} {
		n.Spec.Taints = slices.DeleteFunc(n.Spec.Taints, func(t corev1.Taint) bool { return t.Key == corev1.TaintNodeNotReady })
		if _, err := admin.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{}); err != nil {
			t.Fatalf("node %s ready: %v", n.Name, err)
		}
	}
	stop, err := cp.StartControllerManager(ctx, "daemonset")
	if err != nil {
		t.Fatal(err)
	}
	defer stop()

	ds := m.daemonSet
	clustertest.Eventually(t, 60*time.Second, "the DaemonSet controller never counted its nodes", func() bool {
		got, err := admin.AppsV1().DaemonSets(ds.Namespace).Get(ctx, ds.Name, metav1.GetOptions{})
		return err == nil && got.Status.ObservedGeneration == got.Generation && got.Status.DesiredNumberScheduled > 0
	})
	got, err := admin.AppsV1().DaemonSets(ds.Namespace).Get(ctx, ds.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got.Status.DesiredNumberScheduled != 1 {
		t.Errorf("the DaemonSet wants %d pods, want 1 (the collector node)", got.Status.DesiredNumberScheduled)
	}
	var pods *corev1.PodList
	clustertest.Eventually(t, 30*time.Second, "no collector pod created", func() bool {
		pods, err = admin.CoreV1().Pods(ds.Namespace).List(ctx, metav1.ListOptions{})
		return err == nil && len(pods.Items) > 0
	})
	if len(pods.Items) != 1 {
		t.Fatalf("%d pods, want 1", len(pods.Items))
	}
	pod := pods.Items[0]
	// The controller pins each pod to its node by node affinity on the
	// node's name; with no scheduler here, that is where it would go.
	if target := affinityNode(&pod); target != collector.Name {
		t.Errorf("the pod is for node %q, want %q", target, collector.Name)
	}
	pc, err := admin.SchedulingV1().PriorityClasses().Get(ctx, pod.Spec.PriorityClassName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if pod.Spec.Priority == nil || *pod.Spec.Priority != pc.Value {
		t.Errorf("pod priority %v, want %s's %d", pod.Spec.Priority, pc.Name, pc.Value)
	}
	t.Logf("pod %s for node %s, priority %s (%d)", pod.Name, affinityNode(&pod), pc.Name, pc.Value)
}

// affinityNode is the node a DaemonSet pod is pinned to.
func affinityNode(p *corev1.Pod) string {
	a := p.Spec.Affinity
	if a == nil || a.NodeAffinity == nil || a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution == nil {
		return ""
	}
	for _, term := range a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms {
		for _, f := range term.MatchFields {
			if f.Key == "metadata.name" && len(f.Values) == 1 {
				return f.Values[0]
			}
		}
	}
	return ""
}

// rbacAllows runs lastgasp's real cluster side (nodeindex's informers,
// liveness's prober, cleanup's controller) with the ServiceAccount's
// client, as `lastgasp run` does in the pod: a non-fatal incident,
// twice, then a fatal one on a node whose kubelet port is silent. Every
// call it makes must be allowed: the informers sync, nothing is retried,
// no Event is lost, and the cluster ends as it should.
func rbacAllows(t *testing.T, cp *controlplane.ControlPlane, admin, sa kubernetes.Interface, saConfig *rest.Config, m *manifests) {
	ctx := t.Context()
	// The KernelCrash records, as deploy/kernelcrash-crd.yaml defines
	// them, written, counted for storms, marked and pruned with the
	// ServiceAccount's rights.
	if err := cp.InstallKernelCrashCRD(); err != nil {
		t.Fatal(err)
	}
	saDynamic, err := dynamic.NewForConfig(saConfig)
	if err != nil {
		t.Fatal(err)
	}
	records := crashrecord.NewStore(saDynamic)
	recorder := &crashrecord.Recorder{Store: records, Instance: "deploy-test"}
	storms := storm.New(storm.Config{Store: records})
	pair := testnet.NewPair(t)
	// An address in the collector's subnet that nobody holds: ARP goes
	// unanswered, as for a panicked kernel.
	deadAddr := pair.Node.IPv4.Next()
	oopsAddr := pair.Node.IPv4

	dead := clustertest.Node(t, admin, "dead-node", clustertest.InternalIP(deadAddr.String()), nil)
	oops := clustertest.Node(t, admin, "oops-node", clustertest.InternalIP(oopsAddr.String()), nil)
	var pods []*corev1.Pod
	for _, ns := range []string{"team-a", "team-b"} {
		pods = append(pods, clustertest.Pods(t, admin, ns, dead.Name, 2, clustertest.Hold)...)
	}
	// The dead node's Lease (clustertest.Node made it, as its kubelet
	// would) is not renewed: its kubelet is dead.

	// As clusterSide in cmd/lastgasp builds it, on the ServiceAccount's
	// client.
	factory := informers.NewSharedInformerFactory(sa, 0)
	index, err := nodeindex.New(factory)
	if err != nil {
		t.Fatal(err)
	}
	prober := &liveness.Prober{
		Client:      sa,
		Window:      1500 * time.Millisecond,
		Attempt:     500 * time.Millisecond,
		LeaseMargin: 500 * time.Millisecond,
		// The probe leaves from the collector's namespace, as from a
		// collector node.
		Do: pair.Collector.Netns.Do,
	}
	ctrl := cleanup.New(cleanup.Config{
		Client: sa, Index: index, Prober: prober, Instance: "deploy-test",
		// The brake Lease the manifests make, as the config names it.
		Safety:        cleanup.Safety{BrakeLeaseNamespace: m.brakeLease.Namespace, BrakeLeaseName: m.brakeLease.Name},
		TaintNonFatal: true, // --taint-non-fatal: a JSON patch of the node
		Record:        recorder.Record, Hold: storms.Hold,
		// A refused call shows here, in the test's log, as it is retried.
		Logger: slog.New(slog.NewTextHandler(t.Output(), nil)),
	})
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	factory.Start(runCtx.Done())
	go func() { defer close(done); ctrl.Run(runCtx, 2) }()
	defer func() { cancel(); <-done; factory.Shutdown() }()

	syncCtx, cancelSync := context.WithTimeout(ctx, 30*time.Second)
	defer cancelSync()
	if err := index.WaitForSync(syncCtx); err != nil {
		t.Fatalf("the ServiceAccount's node and pod informers (list, watch): %v", err)
	}
	stats := ctrl.Stats()

	// A non-fatal incident: the node annotated, one Event. The same
	// incident again (a second collector, a replay): the Event is found
	// already there, which must not need any other right.
	nonFatal := detect.Incident{
		ID: "deploytest0oops", Source: oopsAddr, Kind: pattern.KindOops,
		Reason: "Oops: general protection fault, probably for non-canonical address", Cause: "Oops: general protection fault",
		First: time.Now(), Last: time.Now(),
	}
	for range 2 {
		waitIndexed(t, index, oopsAddr, 0)
		ctrl.Enqueue(nonFatal)
		clustertest.Eventually(t, 30*time.Second, "non-fatal incident never finished", func() bool { return ctrl.Pending() == 0 })
	}
	got, err := admin.CoreV1().Nodes().Get(ctx, oops.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got.Annotations[cleanup.AnnotationKernelIncident] != nonFatal.ID {
		t.Errorf("oops node annotations %v", got.Annotations)
	}
	if !slices.ContainsFunc(got.Spec.Taints, func(t corev1.Taint) bool { return t.Key == cleanup.TaintKey }) {
		t.Errorf("oops node taints %v", got.Spec.Taints)
	}
	if ev := clustertest.EventsFor(t, admin, "", oops.UID); len(ev) != 1 || ev[0].Reason != cleanup.EventReasonNodeKernelProblem {
		t.Errorf("oops node events %+v", ev)
	}
	if stats.Events.Load() != 1 || stats.EventErrors.Load() != 0 {
		t.Errorf("events created %d, failed %d: want 1 and 0", stats.Events.Load(), stats.EventErrors.Load())
	}

	// A fatal incident from the dead node: probed (kubelet port silent,
	// Lease read and stale), its pods annotated, failed, Evented and
	// deleted, the node annotated, Evented and deleted.
	now := time.Now()
	fatal := detect.Incident{
		ID: "deploytest0panic", Source: deadAddr, Kind: pattern.KindOops, Fatal: true,
		Reason: "Kernel panic - not syncing: Fatal exception",
		Cause:  "BUG: kernel NULL pointer dereference, address: 0000000000000000",
		First:  now.Add(-time.Second), Last: now, PanicAt: now,
	}
	waitIndexed(t, index, deadAddr, len(pods))
	ctrl.Enqueue(fatal)
	clustertest.Eventually(t, 60*time.Second, "dead node never deleted", func() bool {
		_, err := admin.CoreV1().Nodes().Get(ctx, dead.Name, metav1.GetOptions{})
		return apierrors.IsNotFound(err)
	})
	clustertest.Eventually(t, 30*time.Second, "fatal incident never finished", func() bool { return ctrl.Pending() == 0 })
	for _, p := range pods {
		got, err := admin.CoreV1().Pods(p.Namespace).Get(ctx, p.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		clustertest.CheckPodEnded(t, got, fatal, corev1.PodFailed)
		if ev := clustertest.EventsFor(t, admin, p.Namespace, p.UID); len(ev) != 1 || ev[0].Reason != cleanup.EventReasonNodeKernelPanic {
			t.Errorf("pod %s/%s events %+v", p.Namespace, p.Name, ev)
		}
	}
	if ev := clustertest.EventsFor(t, admin, "", dead.UID); len(ev) != 1 || ev[0].Reason != cleanup.EventReasonNodeKernelPanic {
		t.Errorf("dead node events %+v", ev)
	}
	want := map[string]uint64{
		"pods failed": uint64(len(pods)), "pods deleted": uint64(len(pods)), "nodes deleted": 1,
		"events": 1 + uint64(len(pods)) + 1, "event errors": 0, "unconfirmed": 0,
		// A refused call is retried, and counted here.
		"api errors": 0, "record errors": 0,
	}
	gotStats := map[string]uint64{
		"pods failed": stats.PodsFailed.Load(), "pods deleted": stats.PodsDeleted.Load(), "nodes deleted": stats.NodesDeleted.Load(),
		"events": stats.Events.Load(), "event errors": stats.EventErrors.Load(), "unconfirmed": stats.Unconfirmed.Load(),
		"api errors": stats.APIErrors.Load(), "record errors": stats.RecordErrors.Load(),
	}
	for k, v := range want {
		if gotStats[k] != v {
			t.Errorf("%s: %d, want %d", k, gotStats[k], v)
		}
	}
	t.Logf("controller stats %v", gotStats)
	// The end was recorded in the brake Lease, with the ServiceAccount's
	// rights (get and update of that one Lease).
	brake, err := admin.CoordinationV1().Leases(m.brakeLease.Namespace).Get(ctx, m.brakeLease.Name, metav1.GetOptions{})
	if err != nil || !strings.Contains(brake.Annotations[cleanup.AnnotationRecentEnds], `"node":"`+dead.Name+`"`) {
		t.Errorf("brake lease: %v %v", err, brake.Annotations)
	}
	// Both incidents recorded (created; listed for storms), a storm's
	// mark (patch), and pruning (list, delete).
	adminRecords := crashrecord.NewStore(dynamic.NewForConfigOrDie(cp.Config)) // the collector never gets one
	for _, id := range []string{nonFatal.ID, fatal.ID} {
		if kc, err := adminRecords.Get(ctx, id); err != nil || kc.Spec.Node.Name == "" {
			t.Errorf("record %s: %v", id, err)
		}
	}
	// The fatal incident's record was written pending first, then made
	// final (get, patch).
	if kc, err := records.Get(ctx, fatal.ID); err != nil || kc.Spec.Outcome != string(cleanup.OutcomeCleanedUp) {
		t.Errorf("record %s as the collector reads it: %+v, %v", fatal.ID, kc, err)
	}
	if err := records.MarkStorm(ctx, fatal.ID); err != nil {
		t.Errorf("mark a storm's record: %v", err)
	}
	if n, err := records.Prune(ctx, time.Nanosecond, time.Now().Add(time.Hour)); err != nil || n != 2 {
		t.Errorf("prune: %d records, %v", n, err)
	}
}

// waitIndexed waits until the informer caches hold the node of addr and
// its pods: in a live cluster they have existed for long, here a moment.
func waitIndexed(t *testing.T, index *nodeindex.Index, addr netip.Addr, pods int) {
	t.Helper()
	clustertest.Eventually(t, 10*time.Second, "the cache never held the node of "+addr.String(), func() bool {
		n, _, _ := index.NodeFor(addr)
		if n == nil {
			return false
		}
		got, _ := index.PodsOn(n.Name)
		return len(got) == pods
	})
}

// access is one request a ServiceAccount might make.
type access struct {
	verb, group, resource, subresource, namespace string
}

func (a access) String() string {
	r := a.resource
	if a.subresource != "" {
		r += "/" + a.subresource
	}
	if a.group != "" {
		r += "." + a.group
	}
	ns := a.namespace
	if ns == "" {
		ns = "*"
	}
	return a.verb + " " + r + " in " + ns
}

// rbacAllowsNothingElse asks the API server, as the ServiceAccount, what
// it may do: everything the code needs, in any namespace where it needs
// it, and none of a list of rights it does not need (reads it does from
// caches instead, updates, other subresources, other groups, secrets,
// other namespaces' leases, escalation). Then a few of those refusals are
// mayDo asks the API server whether sa may do a.
func mayDo(t *testing.T, sa kubernetes.Interface, a access) bool {
	t.Helper()
	review, err := sa.AuthorizationV1().SelfSubjectAccessReviews().Create(t.Context(), &authorizationv1.SelfSubjectAccessReview{
		Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &authorizationv1.ResourceAttributes{
			Verb: a.verb, Group: a.group, Resource: a.resource, Subresource: a.subresource, Namespace: a.namespace,
		}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("access review %s: %v", a, err)
	}
	return review.Status.Allowed
}

// met for real.
func rbacAllowsNothingElse(t *testing.T, admin, sa kubernetes.Interface, m *manifests) {
	ctx := t.Context()
	lease, core, events, records := "coordination.k8s.io", "", "events.k8s.io", "lastgasp.io"
	allowed := []access{
		{"list", core, "nodes", "", ""}, {"watch", core, "nodes", "", ""},
		{"patch", core, "nodes", "", ""}, {"delete", core, "nodes", "", ""},
		{"list", core, "pods", "", ""}, {"watch", core, "pods", "", ""},
		{"delete", core, "pods", "", ""}, {"patch", core, "pods", "status", ""},
		{"create", core, "events", "", ""}, {"create", core, "events", "", "default"},
		{"get", lease, "leases", "", corev1.NamespaceNodeLease},
		{"create", records, "kernelcrashes", "", ""}, {"list", records, "kernelcrashes", "", ""}, {"delete", records, "kernelcrashes", "", ""},
		{"patch", records, "kernelcrashes", "", ""}, {"get", records, "kernelcrashes", "", ""},
	}
	denied := []access{
		{"get", core, "nodes", "", ""}, {"create", core, "nodes", "", ""}, {"update", core, "nodes", "", ""},
		{"patch", core, "nodes", "status", ""}, {"get", core, "nodes", "proxy", ""}, {"deletecollection", core, "nodes", "", ""},
		{"get", core, "pods", "", "team-a"}, {"create", core, "pods", "", "team-a"}, {"update", core, "pods", "", "team-a"},
		{"patch", core, "pods", "", "team-a"},
		{"deletecollection", core, "pods", "", "team-a"}, {"update", core, "pods", "status", "team-a"},
		{"create", core, "pods", "eviction", "team-a"}, {"create", core, "pods", "exec", "team-a"}, {"get", core, "pods", "log", "team-a"},
		{"get", core, "events", "", "default"}, {"list", core, "events", "", ""}, {"update", core, "events", "", "default"},
		{"patch", core, "events", "", "default"}, {"delete", core, "events", "", "default"}, {"create", events, "events", "", "default"},
		{"get", lease, "leases", "", "default"}, {"list", lease, "leases", "", corev1.NamespaceNodeLease},
		{"watch", lease, "leases", "", corev1.NamespaceNodeLease}, {"create", lease, "leases", "", corev1.NamespaceNodeLease},
		{"update", lease, "leases", "", corev1.NamespaceNodeLease}, {"patch", lease, "leases", "", corev1.NamespaceNodeLease},
		{"delete", lease, "leases", "", corev1.NamespaceNodeLease},
		{"get", core, "secrets", "", m.namespace.Name}, {"list", core, "secrets", "", ""}, {"get", core, "configmaps", "", m.namespace.Name},
		{"delete", core, "namespaces", "", ""}, {"create", core, "serviceaccounts", "token", m.namespace.Name},
		{"update", "apps", "daemonsets", "", m.namespace.Name}, {"escalate", "rbac.authorization.k8s.io", "clusterroles", "", ""},
		{"bind", "rbac.authorization.k8s.io", "clusterroles", "", ""}, {"impersonate", core, "users", "", ""},
		{"update", records, "kernelcrashes", "", ""},
		{"watch", records, "kernelcrashes", "", ""}, {"deletecollection", records, "kernelcrashes", "", ""},
		{"create", "apiextensions.k8s.io", "customresourcedefinitions", "", ""},
		{"*", "*", "*", "", ""},
	}
	ask := func(a access) bool { return mayDo(t, sa, a) }
	for _, a := range allowed {
		if !ask(a) {
			t.Errorf("refused: %s", a)
		}
	}
	// The brake Lease: get and update it by name, nothing else.
	for _, c := range []struct {
		verb, name string
		allowed    bool
	}{
		{"get", m.brakeLease.Name, true}, {"update", m.brakeLease.Name, true},
		{"patch", m.brakeLease.Name, false}, {"delete", m.brakeLease.Name, false},
		{"get", "another", false}, {"update", "another", false}, {"create", "", false}, {"list", "", false},
	} {
		review, err := sa.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, &authorizationv1.SelfSubjectAccessReview{
			Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &authorizationv1.ResourceAttributes{
				Verb: c.verb, Group: lease, Resource: "leases", Namespace: m.brakeLease.Namespace, Name: c.name,
			}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("access review: %v", err)
		}
		if review.Status.Allowed != c.allowed {
			t.Errorf("%s lease %q in %s: allowed %v, want %v", c.verb, c.name, m.brakeLease.Namespace, review.Status.Allowed, c.allowed)
		}
	}
	for _, a := range denied {
		if ask(a) {
			t.Errorf("allowed, and not needed: %s", a)
		}
	}

	// And for real: the API server refuses them.
	victim, err := admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "not-lastgasps"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	node := clustertest.Node(t, admin, "live-node", clustertest.InternalIP(netip.MustParseAddr("192.0.2.200").String()), nil)
	refusals := map[string]func() error{
		"list secrets": func() error {
			_, err := sa.CoreV1().Secrets("").List(ctx, metav1.ListOptions{})
			return err
		},
		"delete a namespace": func() error {
			return sa.CoreV1().Namespaces().Delete(ctx, victim.Name, metav1.DeleteOptions{})
		},
		"get a node": func() error {
			_, err := sa.CoreV1().Nodes().Get(ctx, node.Name, metav1.GetOptions{})
			return err
		},
		"create a pod": func() error {
			_, err := sa.CoreV1().Pods(victim.Name).Create(ctx, &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Name: "intruder"},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "busybox"}}},
			}, metav1.CreateOptions{})
			return err
		},
		"write a lease": func() error {
			renew := metav1.NewMicroTime(time.Now())
			_, err := sa.CoordinationV1().Leases(corev1.NamespaceNodeLease).Create(ctx, &coordinationv1.Lease{
				ObjectMeta: metav1.ObjectMeta{Name: node.Name},
				Spec:       coordinationv1.LeaseSpec{HolderIdentity: &node.Name, RenewTime: &renew},
			}, metav1.CreateOptions{})
			return err
		},
	}
	for what, call := range refusals {
		if err := call(); !apierrors.IsForbidden(err) {
			t.Errorf("%s: %v, want Forbidden", what, err)
		}
	}
	if _, err := admin.CoreV1().Namespaces().Get(ctx, victim.Name, metav1.GetOptions{}); err != nil {
		t.Errorf("namespace %s: %v", victim.Name, err)
	}
}
