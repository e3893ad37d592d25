package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const fixtures = "../../testdata/netconsole"

func invoke(args ...string) (code int, stdout, stderr string) {
	var out, errb bytes.Buffer
	code = run(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{},
		{"frobnicate"},
		{"scan"},
		{"scan", "--port", "0", "x.pcap"},
		{"scan", "--port", "70000", "x.pcap"},
		{"scan", "--context-lines", "-1", "x.pcap"},
		{"scan", "--no-such-flag", "x.pcap"},
	} {
		if code, _, stderr := invoke(args...); code != exitUsage || stderr == "" {
			t.Errorf("%q: exit %d, stderr %q; want exit %d and a message", args, code, stderr, exitUsage)
		}
	}
}

func TestScan(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("loading BPF programs needs root")
	}
	code, stdout, stderr := invoke("scan", "--lines", "--stats", filepath.Join(fixtures, "sysrq-ext-v4.pcap"))
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var first struct {
		Source, Flag, Pattern, Kind, Text string
		Port                              int
		Time                              string
	}
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	if err := json.Unmarshal([]byte(lines[0]), &first); err != nil {
		t.Fatalf("first line %q: %v", lines[0], err)
	}
	if first.Source != "10.99.0.2" || first.Port != 6665 || first.Flag != "match" ||
		first.Kind != "sysrq" || first.Text != "6,389,3330270,-;sysrq: Trigger a crash" || first.Time == "" {
		t.Errorf("first line %+v", first)
	}
	// The whole report: the sysrq line, the panic, its trace up to and
	// with the kernel's end marker (a burst stays open until it).
	if len(lines) != 32 {
		t.Errorf("%d lines, want 32 (2 matches, 30 context: every line to the end marker)", len(lines))
	}
	var stats map[string]uint64
	if err := json.Unmarshal([]byte(stderr), &stats); err != nil || stats["packets"] == 0 || stats["matched"] != 2 {
		t.Errorf("--stats printed %q (%v)", stderr, err)
	}

	// A truncated file: the lines before the cut, then an error.
	full, _ := os.ReadFile(filepath.Join(fixtures, "sysrq-v4.pcap"))
	cut := filepath.Join(t.TempDir(), "cut.pcap")
	os.WriteFile(cut, full[:len(full)-50], 0o644)
	code, stdout, stderr = invoke("scan", "--lines", cut)
	if code != exitError || !strings.Contains(stdout, "Kernel panic") || !strings.Contains(stderr, "after") {
		t.Errorf("truncated capture: exit %d, %d bytes out, stderr %q", code, len(stdout), stderr)
	}
}

// TestScanIncidents runs every real capture through the real program and
// the detector: one incident per failure, the right kind, fatal only where
// the node died, none from the healthy node.
func TestScanIncidents(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("loading BPF programs needs root")
	}
	want := map[string]string{ // capture -> kind/fatal/cause/reason
		"healthy":         "",
		"warn-alive":      "warning/false/WARNING: CPU: 0 PID: 111 at drivers/misc/crashmod.c:28 crashmod_init+0x89/0x1000 [crashmod]",
		"null-oops-alive": "oops/false/BUG: kernel NULL pointer dereference, address: 0000000000000000",
		"null-oops-panic": "oops/true/BUG: kernel NULL pointer dereference, address: 0000000000000000/Kernel panic - not syncing: Fatal exception",
		"sysrq-v4":        "sysrq/true/sysrq: Trigger a crash/Kernel panic - not syncing: sysrq triggered crash",
		"sysrq-ext-v4":    "sysrq/true/sysrq: Trigger a crash/Kernel panic - not syncing: sysrq triggered crash",
	}
	for name, w := range want {
		code, stdout, stderr := invoke("scan", filepath.Join(fixtures, name+".pcap"))
		if code != exitOK {
			t.Fatalf("%s: exit %d: %s", name, code, stderr)
		}
		var got []string
		for _, line := range strings.Split(strings.TrimSpace(stdout), "\n") {
			if line == "" {
				continue
			}
			var inc struct {
				ID, Source, Kind, Reason, Cause string
				Fatal                           bool
				First, Last                     string
				Lines                           []string
			}
			if err := json.Unmarshal([]byte(line), &inc); err != nil {
				t.Fatalf("%s: %q: %v", name, line, err)
			}
			s := fmt.Sprintf("%s/%v/%s", inc.Kind, inc.Fatal, inc.Cause)
			if inc.Fatal {
				s += "/" + inc.Reason
			}
			if inc.Source != "10.99.0.2" || inc.ID == "" || inc.First == "" || len(inc.Lines) == 0 {
				t.Errorf("%s: %s", name, line)
			}
			got = append(got, s)
		}
		if strings.Join(got, "\n") != w {
			t.Errorf("%s: incidents\n%s\nwant\n%s", name, strings.Join(got, "\n"), w)
		}
	}
}
