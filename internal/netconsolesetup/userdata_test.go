package netconsolesetup_test

import (
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lastgasp/lastgasp/internal/netconsolesetup"
)

// TestUserdata: where the kernel has userdata and sysdata (6.9+, 6.17+;
// not the rig's 6.1, so a plain directory stands for configfs, laid out
// as such a kernel makes a new target: userdata/ with release_enabled and
// msgid_enabled in it), a target gets userdata/node/value = the Node name
// and both sysdata fields on; a rerun changes nothing; a new name
// reconfigures it.
func TestUserdata(t *testing.T) {
	dir := t.TempDir()
	target := netconsolesetup.Target{
		Collector: netip.MustParseAddr("10.99.0.1"),
		Port:      6666,
		Route: netconsolesetup.Route{
			Device: "eth0", Source: netip.MustParseAddr("10.99.0.2"),
			NextHop: netip.MustParseAddr("10.99.0.1"), NextHopMAC: net.HardwareAddr{2, 0, 0, 0, 0, 1},
		},
	}
	tdir := filepath.Join(dir, target.Name())
	for _, f := range []string{"userdata/release_enabled", "userdata/msgid_enabled", "enabled"} {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(tdir, f)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(tdir, f), []byte("0\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	read := func(name string) string {
		data, _ := os.ReadFile(filepath.Join(tdir, name))
		return strings.TrimSpace(string(data))
	}
	apply := func(node string) netconsolesetup.Action {
		t.Helper()
		changes, err := netconsolesetup.Configfs{Dir: dir, NodeName: node}.Apply([]netconsolesetup.Target{target}, nil)
		if err != nil || len(changes) != 1 {
			t.Fatalf("apply: %v, %v", changes, err)
		}
		return changes[0].Action
	}
	if a := apply("worker-7"); a != netconsolesetup.Reconfigured {
		t.Errorf("first: %s", a)
	}
	for name, want := range map[string]string{
		"userdata/node/value": "worker-7", "userdata/release_enabled": "1", "userdata/msgid_enabled": "1",
		"extended": "1", "enabled": "1", "remote_ip": "10.99.0.1",
	} {
		if got := read(name); got != want {
			t.Errorf("%s: %q, want %q", name, got, want)
		}
	}
	if a := apply("worker-7"); a != netconsolesetup.Unchanged {
		t.Errorf("rerun: %s", a)
	}
	if a := apply("worker-8"); a != netconsolesetup.Reconfigured || read("userdata/node/value") != "worker-8" {
		t.Errorf("renamed: %s, %q", a, read("userdata/node/value"))
	}
}
