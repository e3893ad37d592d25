package bpf_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
)

// TestBindingsCoverArm64 checks that the committed object and bindings
// serve arm64 collectors (Graviton-class machines) as well as amd64: bpf2go's
// bpfel target is one little-endian object for every little-endian
// GOARCH, and the program uses nothing architecture-specific (no pt_regs,
// no CO-RE against the kernel's types). If the target list ever names
// architectures instead, this fails unless arm64 is among them.
func TestBindingsCoverArm64(t *testing.T) {
	goTool := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(goTool); err != nil {
		t.Skipf("skipped: no go tool: %v", err)
	}
	for _, arch := range []string{"amd64", "arm64"} {
		cmd := exec.Command(goTool, "list", "-f", "{{join .GoFiles \" \"}}", ".")
		cmd.Env = append(os.Environ(), "GOOS=linux", "GOARCH="+arch, "CGO_ENABLED=0")
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("go list for %s: %v", arch, err)
		}
		files := strings.Fields(string(out))
		if !slices.ContainsFunc(files, func(f string) bool { return strings.HasPrefix(f, "lastgasp_") && strings.HasSuffix(f, ".go") }) {
			t.Errorf("GOARCH=%s: no generated bindings among %v", arch, files)
		}
	}
}
