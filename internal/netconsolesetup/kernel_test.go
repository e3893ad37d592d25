package netconsolesetup_test

import (
	"bytes"
	"context"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/lastgasp/lastgasp/internal/testrig/kernelrig"
	"github.com/lastgasp/lastgasp/internal/testrig/packettest"
	"github.com/lastgasp/lastgasp/internal/testrig/testnet"
)

// extendedPanic is a panic line in netconsole's extended format:
// "LEVEL,SEQ,USEC,FLAGS;" before the text.
var extendedPanic = regexp.MustCompile(`^\d+,\d+,\d+,[^;]*;Kernel panic - not syncing`)

// TestKernel runs "lastgasp netconsole-setup" (a static build, made now)
// in Debian's 6.1 kernel under qemu, booted with netconsole loaded bare
// (no target on its command line), then panics the guest: the panic must
// reach each collector, in the extended format, from the guest's address
// on the route, to the next hop's MAC. One boot (testdata/guest.sh): the
// failures first (no netconsole, no route), then an IPv4 and an IPv6
// collector on the link and one behind a gateway, a rerun that changes
// nothing, a changed port and a collector dropped, and back.
func TestKernel(t *testing.T) {
	rig := &kernelrig.Rig{Log: t.Logf}
	var tapMAC net.HardwareAddr
	rig.Collector = func(ns *testnet.Netns, ifname string) error {
		return ns.Do(func() error {
			ifi, err := net.InterfaceByName(ifname)
			if err == nil {
				tapMAC = ifi.HardwareAddr
			}
			return err
		})
	}
	// netconsole is loaded bare by the script, after the first step.
	res, out := bootScript(t, rig, "netconsole-setup", "guest.sh")

	const v4, v6, routed = "lastgasp-10.99.0.1", "lastgasp-fd00_99__1", "lastgasp-10.98.0.5"
	for _, c := range []struct {
		step string
		want []string
	}{
		{"first", []string{"exit 0", v4 + " created", v6 + " created", routed + " created"}},
		{"again", []string{"exit 0", v4 + " unchanged", v6 + " unchanged", routed + " unchanged"}},
		{"port", []string{"exit 0", v4 + " reconfigured", v6 + " reconfigured", routed + " removed"}},
		{"back", []string{"exit 0", v4 + " reconfigured", v6 + " reconfigured", routed + " created"}},
	} {
		if got := out["lg-"+c.step]; !slices.Equal(got, c.want) {
			t.Errorf("step %s: got %q, want %q", c.step, got, c.want)
		}
	}
	// Failures: exit 1, one line saying why.
	for step, why := range map[string]string{
		"nomod":   "lastgasp netconsole-setup: no netconsole: ",
		"noroute": "lastgasp netconsole-setup: no route to collector 10.97.0.1: ",
	} {
		got := out["lg-"+step]
		if len(got) != 2 || got[0] != "exit 1" || !strings.HasPrefix(got[1], why) {
			t.Errorf("step %s: got %q, want exit 1 and one line %q...", step, got, why)
		}
	}
	if got, want := out["lg-ls"], []string{routed, v4, v6, "other"}; !slices.Equal(got, want) {
		t.Errorf("targets: %q, want %q", got, want)
	}
	t.Logf("targets: %q", out["lg-target"])

	// The panic, at each collector.
	frames, err := packettest.ReadCapture(res.Pcap)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []struct{ src, dst string }{
		{kernelrig.NodeIPv4, kernelrig.CollectorIPv4},
		{kernelrig.NodeIPv6, kernelrig.CollectorIPv6},
		{kernelrig.NodeIPv4, "10.98.0.5"},
	} {
		if !panicSent(t, frames, tapMAC, netip.MustParseAddr(w.src), netip.MustParseAddr(w.dst)) {
			t.Errorf("no extended-format panic line from %s:%d to %s:%d, MAC %s",
				w.src, kernelrig.NodePort, w.dst, kernelrig.CollectorPort, tapMAC)
		}
	}
}

// bootScript boots rig's kernel (the test skipped if the rig cannot run
// here, or in -short mode) with a static lastgasp, made now, as
// /bin/lastgasp and testdata/SCRIPT as the guest's script, which loads
// netconsole bare and panics the guest. It returns the run and the
// guest's "lg-" lines; the console is logged if the test fails.
func bootScript(t *testing.T, rig *kernelrig.Rig, name, script string) (*kernelrig.Result, map[string][]string) {
	t.Helper()
	if why := rig.Missing(); why != "" {
		t.Skipf("skipped: the kernel rig (%s) %s", orDefault(rig.Release, kernelrig.KernelRelease), why)
	}
	if testing.Short() {
		t.Skip("skipped in -short mode: boots qemu")
	}
	_, file, _, _ := runtime.Caller(0)
	tmp := t.TempDir()
	bin, err := rig.BuildLastgasp(t.Context(), tmp)
	if err != nil {
		t.Fatal(err)
	}
	res, err := rig.Run(context.Background(), kernelrig.Scenario{
		Name:         name,
		Mode:         "script",
		NoNetconsole: true,
		MemoryMB:     512, // room for the initramfs with lastgasp in it
		Timeout:      90 * time.Second,
		Files: []kernelrig.File{
			{Name: "bin/lastgasp", From: bin, Mode: 0o755},
			{Name: "script", From: filepath.Join(filepath.Dir(file), "testdata", script), Mode: 0o755},
		},
	}, tmp)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("boot to panic: %s, %d datagrams", res.Elapsed.Round(100*time.Millisecond), res.Packets)
	console, _ := os.ReadFile(res.Console)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("console:\n%s", console)
		}
	})
	if !res.Panicked {
		t.Fatalf("the guest did not panic (timed out %v)", res.TimedOut)
	}
	return res, kernelrig.GuestLines(console)
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// panicSent reports whether a frame carries a panic line in the extended
// format from src to dst's netconsole port, addressed to mac.
func panicSent(t *testing.T, frames []packettest.Captured, mac net.HardwareAddr, src, dst netip.Addr) bool {
	for _, f := range frames {
		p := gopacket.NewPacket(f.Frame, layers.LayerTypeEthernet, gopacket.Default)
		eth, _ := p.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
		udp, _ := p.Layer(layers.LayerTypeUDP).(*layers.UDP)
		if eth == nil || udp == nil || !bytes.Equal(eth.DstMAC, mac) ||
			udp.SrcPort != kernelrig.NodePort || udp.DstPort != kernelrig.CollectorPort {
			continue
		}
		var s, d net.IP
		if ip4, ok := p.NetworkLayer().(*layers.IPv4); ok {
			s, d = ip4.SrcIP, ip4.DstIP
		} else if ip6, ok := p.NetworkLayer().(*layers.IPv6); ok {
			s, d = ip6.SrcIP, ip6.DstIP
		}
		sa, _ := netip.AddrFromSlice(s)
		da, _ := netip.AddrFromSlice(d)
		if sa.Unmap() == src && da.Unmap() == dst && extendedPanic.Match(udp.Payload) {
			return true
		}
	}
	return false
}
