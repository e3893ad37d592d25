package controlplane

import (
	"context"
	"fmt"
	"os"
	"testing"
)

// TestMain runs a package's tests against one control plane they share,
// set in *shared before they run (and passed to each setup, such as
// (*ControlPlane).InstallKernelCrashCRD), then stopped; it exits the
// process. Without root (the binaries are cached under /var/cache) it
// says so and exits 0; pkg names the package in that line.
func TestMain(m *testing.M, pkg string, shared **ControlPlane, setup ...func(*ControlPlane) error) {
	if os.Geteuid() != 0 {
		fmt.Println(pkg + " tests need root (the control plane's binaries are cached under /var/cache)")
		os.Exit(0)
	}
	cp, err := Start(context.Background())
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	*shared = cp
	code := 1
	for _, s := range setup {
		if err = s(cp); err != nil {
			fmt.Fprintln(os.Stderr, err)
			break
		}
	}
	if err == nil {
		code = m.Run()
	}
	if err := cp.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, "stop control plane:", err)
	}
	os.Exit(code)
}
