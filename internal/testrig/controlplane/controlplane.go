// Package controlplane starts a real Kubernetes control plane (etcd and
// kube-apiserver, and kube-controller-manager on request) for tests and
// the demo, with controller-runtime's envtest. The binaries are built once
// from the Go module proxy by build.sh, beside this file, and cached
// outside git.
package controlplane

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"
)

// Binaries returns the directory holding kube-apiserver, etcd and
// kube-controller-manager, building them first if they are not cached
// (about 10 minutes, once).
func Binaries(ctx context.Context) (string, error) {
	_, self, _, ok := runtime.Caller(0)
	if !ok {
		return "", fmt.Errorf("control plane: cannot find build.sh")
	}
	cmd := exec.CommandContext(ctx, filepath.Join(filepath.Dir(self), "build.sh"))
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("control plane: build binaries: %w", err)
	}
	return strings.TrimSpace(string(out)), nil
}

// ControlPlane is a running etcd and kube-apiserver.
type ControlPlane struct {
	env *envtest.Environment
	// Config reaches the API server as an administrator.
	Config *rest.Config
	// Dir holds the binaries.
	Dir string
}

// Start starts etcd and kube-apiserver on loopback.
func Start(ctx context.Context) (*ControlPlane, error) {
	dir, err := Binaries(ctx)
	if err != nil {
		return nil, err
	}
	env := &envtest.Environment{
		BinaryAssetsDirectory:    dir,
		ControlPlaneStartTimeout: 60 * time.Second,
		ControlPlaneStopTimeout:  30 * time.Second,
	}
	// Without a default route kube-apiserver cannot pick an address to
	// advertise; loopback is where it listens anyway. It refuses to
	// publish a loopback address in the default Service's endpoints,
	// which nothing here needs: no endpoint reconciler.
	api := env.ControlPlane.GetAPIServer()
	api.Configure().Set("advertise-address", "127.0.0.1")
	api.Configure().Set("endpoint-reconciler-type", "none")
	if os.Getenv("LASTGASP_CONTROLPLANE_LOGS") != "" {
		api.Out, api.Err = os.Stderr, os.Stderr
	}
	// envtest logs through controller-runtime's logger, which prints a
	// goroutine's stack as a warning when nobody set it: nothing of it
	// is needed here.
	ctrllog.SetLogger(logr.Discard())
	cfg, err := env.Start()
	if err != nil {
		return nil, fmt.Errorf("control plane: start: %w", err)
	}
	cfg.QPS, cfg.Burst = 200, 400
	return &ControlPlane{env: env, Config: cfg, Dir: dir}, nil
}

// Client returns a clientset for the API server.
func (c *ControlPlane) Client() (*kubernetes.Clientset, error) {
	return kubernetes.NewForConfig(c.Config)
}

// Stop stops everything.
func (c *ControlPlane) Stop() error {
	return c.env.Stop()
}

// StartControllerManager runs kube-controller-manager with only the named
// controllers (for example "job"), as an administrator, until ctx is done
// or the returned stop is called.
func (c *ControlPlane) StartControllerManager(ctx context.Context, controllers ...string) (stop func(), err error) {
	kubeconfig, err := c.Kubeconfig()
	if err != nil {
		return nil, fmt.Errorf("controller manager: %w", err)
	}
	dir, err := os.MkdirTemp("", "lastgasp-kcm-")
	if err != nil {
		return nil, err
	}
	path := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(path, kubeconfig, 0o600); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	cmd := exec.CommandContext(ctx, filepath.Join(c.Dir, "kube-controller-manager"),
		"--kubeconfig="+path,
		"--controllers="+strings.Join(controllers, ","),
		"--leader-elect=false",
		"--secure-port=0",
		"--use-service-account-credentials=false",
	)
	if os.Getenv("LASTGASP_CONTROLPLANE_LOGS") != "" {
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	}
	if err := cmd.Start(); err != nil {
		cancel()
		os.RemoveAll(dir)
		return nil, fmt.Errorf("controller manager: %w", err)
	}
	return func() {
		cancel()
		cmd.Wait()
		os.RemoveAll(dir)
	}, nil
}

// Kubeconfig returns a kubeconfig for an administrator of the API server.
func (c *ControlPlane) Kubeconfig() ([]byte, error) {
	user, err := c.env.AddUser(envtest.User{Name: "lastgasp", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return nil, fmt.Errorf("control plane: user: %w", err)
	}
	return user.KubeConfig()
}
