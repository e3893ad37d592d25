package kernelrig_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lastgasp/lastgasp/internal/testrig/kernelrig"
)

// TestLive boots the real kernel three times under qemu, makes it fail,
// and runs what its netconsole sent through the real XDP program and the
// detector: the whole way, from a dying kernel to an incident. The
// scenarios run side by side (about 30 s in all on 2 cores).
func TestLive(t *testing.T) {
	rig := &kernelrig.Rig{Log: t.Logf}
	if why := rig.Missing(); why != "" {
		t.Skipf("skipped: the kernel rig %s", why)
	}
	if testing.Short() {
		t.Skip("skipped in -short mode: boots qemu")
	}
	ctx := context.Background()
	start := time.Now()
	if _, err := rig.Build(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("build (or cache hit): %s", time.Since(start).Round(time.Millisecond))

	for _, tc := range []struct {
		s    kernelrig.Scenario
		want incident // source, kind, fatal, cause, reason; cause "" to skip
	}{
		{
			kernelrig.Scenario{Name: "sysrq-basic-v4", Mode: "sysrq", Noise: 5},
			incident{"10.99.0.2", "sysrq", true, "sysrq: Trigger a crash",
				"Kernel panic - not syncing: sysrq triggered crash"},
		},
		{
			kernelrig.Scenario{Name: "null-panic-ext-v6", Mode: "null", Extended: true, IPv6: true, Noise: 5,
				Sysctls: []string{"kernel.panic_on_oops=1"}},
			incident{"fd00:99::2", "oops", true, "BUG: kernel NULL pointer dereference, address: 0000000000000000",
				"Kernel panic - not syncing: Fatal exception"},
		},
		{
			kernelrig.Scenario{Name: "hung-panic-basic-v4", Mode: "hung", Noise: 5, Seconds: 30, Wait: 20 * time.Second,
				Sysctls: []string{"kernel.hung_task_timeout_secs=5", "kernel.hung_task_check_interval_secs=1", "kernel.hung_task_panic=1"}},
			// The pid in the cause varies: checked by prefix below.
			incident{"10.99.0.2", "hung_task", true, "INFO: task lg-hung:",
				"Kernel panic - not syncing: hung_task: blocked tasks"},
		},
	} {
		t.Run(tc.s.Name, func(t *testing.T) {
			t.Parallel()
			tc.s.Timeout = 60 * time.Second
			dir := t.TempDir()
			rig := &kernelrig.Rig{Log: t.Logf} // built above: a cache hit
			res, err := rig.Run(ctx, tc.s, dir)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("boot to end: %s, %d datagrams", res.Elapsed.Round(100*time.Millisecond), res.Packets)
			if !res.Panicked || res.Alive || res.TimedOut {
				console, _ := os.ReadFile(res.Console)
				t.Fatalf("panicked %v, alive %v, timed out %v; console ends:\n%s",
					res.Panicked, res.Alive, res.TimedOut, tail(string(console), 40))
			}
			incs, err := scanCapture(res.Pcap)
			if err != nil {
				t.Fatal(err)
			}
			if len(incs) != 1 {
				t.Fatalf("%d incidents, want 1: %v", len(incs), summaries(incs))
			}
			got := summarize(incs[0])
			want := tc.want
			if strings.HasSuffix(want.Cause, ":") && strings.HasPrefix(got.Cause, want.Cause) {
				want.Cause = got.Cause
			}
			if got != want {
				t.Errorf("incident\n%+v\nwant\n%+v", got, want)
			}
			if t.Failed() {
				keep := filepath.Join(os.TempDir(), "kernelrig-failed-"+tc.s.Name)
				os.MkdirAll(keep, 0o755)
				for _, f := range []string{res.Pcap, res.Console} {
					data, _ := os.ReadFile(f)
					os.WriteFile(filepath.Join(keep, filepath.Base(f)), data, 0o644)
				}
				t.Logf("capture and console kept in %s", keep)
			}
		})
	}
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
