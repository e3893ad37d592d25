package controlplane

import (
	"fmt"
	"path/filepath"
	"runtime"

	"github.com/go-logr/logr"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	crlog "sigs.k8s.io/controller-runtime/pkg/log"
)

// InstallKernelCrashCRD creates the KernelCrash CRD as deployed
// (deploy/kernelcrash-crd.yaml) and waits until it is served. Installing
// it again is harmless.
func (c *ControlPlane) InstallKernelCrashCRD() error {
	_, self, _, ok := runtime.Caller(0)
	if !ok {
		return fmt.Errorf("control plane: cannot find deploy/")
	}
	path := filepath.Join(filepath.Dir(self), "../../../deploy/kernelcrash-crd.yaml")
	crlog.SetLogger(logr.Discard()) // envtest logs through controller-runtime's logger, which complains unset
	if _, err := envtest.InstallCRDs(c.Config, envtest.CRDInstallOptions{Paths: []string{path}, ErrorIfPathMissing: true}); err != nil {
		return fmt.Errorf("control plane: install the KernelCrash CRD: %w", err)
	}
	return nil
}
