package bpf_test

import (
	"os"
	"testing"

	"github.com/lastgasp/lastgasp/loader"
)

// verifierBudget is the most instructions the kernel's verifier may
// process to load the program, in any configuration. The kernel's limit
// is 1,000,000 (BPF_COMPLEXITY_LIMIT_INSNS); a program near it is one
// compiler release or one small feature away from being rejected, and
// older kernels prune less well than the 6.18 this is measured on, so the
// budget keeps three quarters of the limit free.
const verifierBudget = 250_000

// TestVerifierBudget loads the program in each configuration the
// load-time constants select (the verifier prunes what they switch off,
// so each is a different walk) and fails when the verifier processed more
// than verifierBudget instructions for any of them.
func TestVerifierBudget(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("loading BPF programs needs root")
	}
	for _, tc := range []struct {
		name string
		cfg  loader.Config
	}{
		{"default", loader.Config{}},
		{"no-context", loader.Config{NoContext: true}},
		{"forward-pass", loader.Config{ForwardPass: true}},
		{"local-only", loader.Config{LocalOnly: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.RingBufSize = 1 << 20
			prog, err := loader.Load(tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer prog.Close()
			info, err := prog.XDP().Info()
			if err != nil {
				t.Fatalf("program info: %v", err)
			}
			n, ok := info.VerifiedInstructions()
			if !ok {
				t.Skip("this kernel does not report verified instructions (before 5.16)")
			}
			t.Logf("verified instructions: %d (budget %d, kernel limit 1,000,000)", n, verifierBudget)
			if n > verifierBudget {
				t.Errorf("the verifier processed %d instructions, over the budget of %d", n, verifierBudget)
			}
		})
	}
}
