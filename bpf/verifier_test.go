package bpf_test

import (
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/cilium/ebpf/asm"

	"github.com/lastgasp/lastgasp/bpf"
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

// stackBudget is the most stack, in bytes, that the program and the
// functions it calls may use together on their deepest chain of calls.
// The verifier's limit is 512 (MAX_BPF_STACK), each function's share
// rounded up to 32 bytes; an overflow is found only when the program is
// loaded ("combined stack size of 3 calls is 528. Too large"), so this
// test finds it first, from the object, and keeps a margin for a compiler
// that spills a little more.
const stackBudget = 480

// TestStackBudget computes each function's stack from the object's
// instructions (its deepest access below the frame pointer, R10, or
// pointer made from it), and
// fails when the deepest chain of calls from the XDP program, each frame
// rounded up to 32 bytes as the verifier counts it, passes stackBudget.
func TestStackBudget(t *testing.T) {
	spec, err := bpf.LoadLastgasp()
	if err != nil {
		t.Fatal(err)
	}
	prog := spec.Programs["lastgasp_xdp"]
	if prog == nil {
		t.Fatal("no program lastgasp_xdp in the object")
	}
	depth := map[string]int{}      // function -> bytes of stack it uses
	calls := map[string][]string{} // function -> functions it calls
	fn := prog.Name
	// Registers holding R10 plus a constant ("r1 = r10; r1 += -264": a
	// stack buffer passed to a helper or a function), in instruction
	// order: the deepest such pointer counts as an access, since a
	// buffer may be reached only through it.
	fromFP := map[asm.Register]int{}
	for _, ins := range prog.Instructions {
		if sym := ins.Symbol(); sym != "" {
			fn = sym
			clear(fromFP)
		}
		if ins.IsFunctionCall() {
			calls[fn] = append(calls[fn], ins.Reference())
		}
		if op := ins.OpCode; op.JumpOp() == asm.Call {
			for r := asm.R0; r <= asm.R5; r++ {
				delete(fromFP, r) // a call's scratch registers
			}
		}
		if (ins.Dst == asm.R10 || ins.Src == asm.R10) && ins.Offset < 0 {
			depth[fn] = max(depth[fn], -int(ins.Offset))
		}
		op := ins.OpCode
		switch {
		case op.Class() == asm.ALU64Class && op.ALUOp() == asm.Mov && op.Source() == asm.RegSource && ins.Src == asm.R10:
			fromFP[ins.Dst] = 0
		case op.Class() == asm.ALU64Class && op.ALUOp() == asm.Add && op.Source() == asm.ImmSource:
			if off, ok := fromFP[ins.Dst]; ok {
				fromFP[ins.Dst] = off + int(ins.Constant)
				depth[fn] = max(depth[fn], -fromFP[ins.Dst])
			}
		case op.Class().IsALU() || op.Class().IsLoad():
			delete(fromFP, ins.Dst) // any other write ends the pointer
		}
	}
	roundUp := func(n int) int { return (max(n, 1) + 31) &^ 31 }
	var chain func(fn string, seen map[string]bool) (int, []string)
	chain = func(fn string, seen map[string]bool) (int, []string) {
		if seen[fn] {
			t.Fatalf("recursive call through %s", fn)
		}
		seen[fn] = true
		defer delete(seen, fn)
		deepest, path := 0, []string(nil)
		for _, callee := range calls[fn] {
			if d, p := chain(callee, seen); d > deepest {
				deepest, path = d, p
			}
		}
		return roundUp(depth[fn]) + deepest, append([]string{fmt.Sprintf("%s %d", fn, depth[fn])}, path...)
	}
	total, path := chain(prog.Name, map[string]bool{})
	t.Logf("deepest chain: %s: %d bytes with rounding (budget %d, verifier limit 512)", strings.Join(path, " -> "), total, stackBudget)
	if total > stackBudget {
		t.Errorf("the deepest chain of calls uses %d bytes of stack, over the budget of %d", total, stackBudget)
	}
}
