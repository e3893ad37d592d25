package kernelrig_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/lastgasp/lastgasp/internal/testrig/kernelrig"
	"github.com/lastgasp/lastgasp/internal/testrig/packettest"
	"github.com/lastgasp/lastgasp/internal/testrig/testnet"
)

// TestGuestKernel runs lastgasp on the oldest kernel it claims to run on:
// a static build of cmd/lastgasp, made now, goes into the rig's
// initramfs, and Debian's 6.1 kernel boots under qemu with it. Inside
// the guest (guest/script):
//
//   - "lastgasp scan" runs a real capture through the real XDP program
//     with BPF_PROG_TEST_RUN: the 6.1 verifier must accept the program,
//     and the incidents printed must be those the host's kernel gives
//     (the same binary, run here).
//   - "lastgasp run" attaches the program natively (XDP in the
//     virtio-net driver) to the guest's NIC, and the test sends a real
//     panic to it from the host, line by line: the guest must report the
//     incident.
//
// guestTimeout bounds one boot of the guest, run to its end.
const guestTimeout = 3 * time.Minute

func TestGuestKernel(t *testing.T) {
	rig := &kernelrig.Rig{Log: t.Logf}
	if why := rig.Missing(); why != "" {
		t.Skipf("skipped: the kernel rig %s", why)
	}
	if testing.Short() {
		t.Skip("skipped in -short mode: boots qemu")
	}
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(file), "..", "..", "..")
	tmp := t.TempDir()

	// A static lastgasp, built for this run, never kept.
	bin, err := rig.BuildLastgasp(t.Context(), tmp)
	if err != nil {
		t.Fatal(err)
	}

	// What the host's kernel makes of the capture: the guest must agree.
	capture := filepath.Join(root, "testdata", "kernel", "null-panic-ext-v6.pcap")
	hostScan, err := exec.Command(bin, "scan", capture).Output()
	if err != nil {
		t.Fatalf("lastgasp scan on the host: %v", err)
	}
	wantScan := strings.Split(strings.TrimSpace(string(hostScan)), "\n")
	if len(wantScan) != 1 || !strings.Contains(wantScan[0], `"kind":"oops"`) {
		t.Fatalf("host scan: want one oops incident, got:\n%s", hostScan)
	}

	// The panic sent to the guest's collector: a real capture's lines.
	frames, err := packettest.ReadCapture(filepath.Join(root, "testdata", "netconsole", "null-oops-panic.pcap"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	const name = "guest-kernel"
	console := filepath.Join(dir, name+".console.log")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sent := make(chan error, 1)
	rig.Collector = func(ns *testnet.Netns, ifname string) error {
		go func() { sent <- sendWhenReady(ctx, ns, console, frames) }()
		return nil
	}

	res, err := rig.Run(ctx, kernelrig.Scenario{
		Name: name,
		Mode: "script",
		Wait: time.Second,
		// Room for the initramfs with lastgasp in it, and for the
		// program's maps.
		MemoryMB: 512,
		// Under TCG the guest's pace is the host's spare CPU: about 30 s
		// on a quiet 2-core host, past a minute with other tests beside.
		Timeout: guestTimeout,
		Files: []kernelrig.File{
			{Name: "bin/lastgasp", From: bin, Mode: 0o755},
			{Name: "script", From: filepath.Join(filepath.Dir(file), "guest", "script"), Mode: 0o755},
			{Name: "capture.pcap", From: capture},
		},
	}, dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("boot to end: %s", res.Elapsed.Round(100*time.Millisecond))
	consoleLog, err := os.ReadFile(res.Console)
	if err != nil {
		t.Fatal(err)
	}
	out := kernelrig.GuestLines(consoleLog)
	defer func() {
		if t.Failed() {
			data, _ := os.ReadFile(res.Console)
			t.Logf("console ends:\n%s", tail(string(data), 60))
		}
	}()
	t.Logf("guest: %s", strings.Join(out["lg-guest"], "; "))
	if res.TimedOut {
		t.Fatalf("the guest did not finish in %v", guestTimeout)
	}
	if err := <-sent; err != nil {
		t.Fatalf("send the panic to the guest: %v", err)
	}
	if got := out["lg-guest"]; len(got) < 1 || !strings.HasPrefix(got[0], "kernel "+kernelrig.KernelRelease) {
		t.Fatalf("guest kernel: %q, want %s", got, kernelrig.KernelRelease)
	}

	// (a) The same incident from the 6.1 kernel's run of the program.
	if !contains(out["lg-guest"], "scan exit 0") {
		t.Errorf("lastgasp scan in the guest failed: %q\n%s", out["lg-guest"], strings.Join(out["lg-scan-err"], "\n"))
	}
	if got := out["lg-scan"]; strings.Join(got, "\n") != strings.Join(wantScan, "\n") {
		t.Errorf("guest scan:\n%s\nhost scan:\n%s", strings.Join(got, "\n"), strings.Join(wantScan, "\n"))
	}

	// (b) Attached natively, the program forwarded the panic and the
	// collector reported it.
	var attached, incident map[string]any
	for _, line := range out["lg-run"] {
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) != nil {
			continue
		}
		switch rec["msg"] {
		case "attached XDP program":
			attached = rec
		case "incident":
			incident = rec
		}
	}
	if attached == nil || attached["mode"] != "native" || attached["interface"] != "eth0" {
		t.Errorf("attach: %v, want native on eth0", attached)
	}
	if incident == nil || incident["kind"] != "oops" || incident["fatal"] != true || incident["source"] != kernelrig.CollectorIPv4 {
		t.Errorf("incident: %v, want a fatal oops from %s", incident, kernelrig.CollectorIPv4)
	}
	if !contains(out["lg-guest"], "run exit 0") {
		t.Errorf("lastgasp run in the guest: %q, want exit 0", out["lg-guest"])
	}
}

// sendWhenReady waits until the guest's console says its collector is
// ready, then sends the payloads of frames, in order, from the rig's
// namespace (the collector's address) to the guest's netconsole port.
func sendWhenReady(ctx context.Context, ns *testnet.Netns, console string, frames []packettest.Captured) error {
	for {
		data, _ := os.ReadFile(console)
		if bytes.Contains(data, []byte("lg-guest: ready")) {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond): // the console file is the only signal
		}
	}
	return ns.Do(func() error {
		conn, err := net.DialUDP("udp", nil, &net.UDPAddr{IP: net.ParseIP(kernelrig.NodeIPv4), Port: kernelrig.CollectorPort})
		if err != nil {
			return err
		}
		defer conn.Close()
		for _, f := range frames {
			if _, err := conn.Write(packettest.UDPPayload(f.Frame)); err != nil {
				return err
			}
			// Paced: the emulated guest drains its NIC's ring slowly.
			time.Sleep(time.Millisecond)
		}
		return nil
	})
}

func contains(list []string, s string) bool {
	for _, l := range list {
		if l == s {
			return true
		}
	}
	return false
}
