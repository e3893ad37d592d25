package loader_test

import (
	"errors"
	"path/filepath"
	"slices"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/lastgasp/lastgasp/bpf"
	"github.com/lastgasp/lastgasp/internal/testrig/testnet"
	"github.com/lastgasp/lastgasp/loader"
)

// TestPinPathLock runs two collectors on one pin path, as two "lastgasp
// run --pin-path" would: the second Load must fail with ErrPinPathInUse,
// and must not have touched what the first one runs (its port table, the
// program its pinned link runs). Once the first closes, the path is free.
func TestPinPathLock(t *testing.T) {
	pair := testnet.NewPair(t)
	dir := pinDir(t)
	prog1 := load(t, loader.Config{PinPath: dir, Ports: []uint16{netconsolePort}})
	attach(t, pair, prog1, loader.ModeNative)
	id1 := progID(t, prog1)

	prog2, err := loader.Load(loader.Config{PinPath: dir, Ports: []uint16{otherPort}, RingBufSize: ringBufSize})
	if err == nil {
		prog2.Close()
		t.Fatal("a second Load on the same pin path succeeded")
	}
	if !errors.Is(err, loader.ErrPinPathInUse) {
		t.Fatalf("second Load: %v, want ErrPinPathInUse", err)
	}
	t.Logf("second Load: %v", err)

	// Nothing of the first collector's changed.
	if got := pinnedPorts(t, dir); !slices.Equal(got, []uint16{netconsolePort}) {
		t.Errorf("pinned port table after the second Load: %v, want [%d]", got, netconsolePort)
	}
	expectXDP(t, pair, testnet.XDPState{Mode: "native", ProgID: id1})

	// Released by Close: the next collector takes over.
	if err := prog1.Close(); err != nil {
		t.Fatal(err)
	}
	prog3 := load(t, loader.Config{PinPath: dir})
	attach(t, pair, prog3, loader.ModeNative)
	expectXDP(t, pair, testnet.XDPState{Mode: "native", ProgID: progID(t, prog3)})
}

// pinnedPorts lists the port table pinned under dir.
func pinnedPorts(t *testing.T, dir string) []uint16 {
	t.Helper()
	m, err := ebpf.LoadPinnedMap(filepath.Join(dir, "ports"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	var bits bpf.LastgaspPortBits
	if err := m.Lookup(uint32(0), &bits); err != nil {
		t.Fatal(err)
	}
	var ports []uint16
	for port := range 1 << 16 {
		if bits.Bits[port/64]&(1<<(port%64)) != 0 {
			ports = append(ports, uint16(port))
		}
	}
	return ports
}
