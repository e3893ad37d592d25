package loader_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/lastgasp/lastgasp/bpf"
	"github.com/lastgasp/lastgasp/internal/testrig/testnet"
	"github.com/lastgasp/lastgasp/loader"
)

// TestIncompatiblePinsReplaced upgrades a pin path made by an older
// lastgasp. Maps pinned with an older layout (the state map of contract
// version 1, an 8-byte value) must be replaced, all of them, and Load
// succeed: it used to fail with ErrMapIncompatible while the old program
// ran on, unread. Maps of the current layout but another contract
// version are replaced too, and the new program takes over the old one's
// pinned link; maps of this version are kept.
func TestIncompatiblePinsReplaced(t *testing.T) {
	t.Run("older layout", func(t *testing.T) {
		testnet.RequireRoot(t)
		dir := pinDir(t)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		old := pinMap(t, dir, bpf.LastgaspMapState, &ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 1})
		ports := pinMap(t, dir, bpf.LastgaspMapPorts, &ebpf.MapSpec{Type: ebpf.Hash, KeySize: 2, ValueSize: 1, MaxEntries: uint32(bpf.LastgaspLimitsPORTS_MAX)})
		prog := load(t, loader.Config{PinPath: dir})
		if id := pinnedMapID(t, dir, bpf.LastgaspMapState); id == old {
			t.Errorf("the state map of the older layout is still pinned")
		}
		if id := pinnedMapID(t, dir, bpf.LastgaspMapPorts); id == ports {
			t.Errorf("the port table pinned with the older state map is still pinned: want the whole set replaced")
		}
		checkVersion(t, dir)
		if err := prog.SetPorts([]uint16{netconsolePort}); err != nil {
			t.Errorf("the new program's port table: %v", err)
		}
	})

	t.Run("another version, program attached", func(t *testing.T) {
		pair := testnet.NewPair(t)
		dir := pinDir(t)
		prog1 := load(t, loader.Config{PinPath: dir})
		attach(t, pair, prog1, loader.ModeNative)
		bursts := pinnedMapID(t, dir, bpf.LastgaspMapBursts)
		if err := prog1.Close(); err != nil { // its link stays pinned: it runs on
			t.Fatal(err)
		}
		setVersion(t, dir, 1)

		prog2 := load(t, loader.Config{PinPath: dir})
		if id := pinnedMapID(t, dir, bpf.LastgaspMapBursts); id == bursts {
			t.Errorf("maps of contract version 1 kept")
		}
		checkVersion(t, dir)
		attach(t, pair, prog2, loader.ModeNative)
		expectXDP(t, pair, testnet.XDPState{Mode: "native", ProgID: progID(t, prog2)})

		// Maps of this version are kept across a restart.
		bursts = pinnedMapID(t, dir, bpf.LastgaspMapBursts)
		if err := prog2.Close(); err != nil {
			t.Fatal(err)
		}
		load(t, loader.Config{PinPath: dir})
		if id := pinnedMapID(t, dir, bpf.LastgaspMapBursts); id != bursts {
			t.Errorf("maps of this version replaced on a restart")
		}
	})
}

// pinMap creates a map from spec and pins it under dir as name; it
// returns the map's id.
func pinMap(t *testing.T, dir, name string, spec *ebpf.MapSpec) ebpf.MapID {
	t.Helper()
	m, err := ebpf.NewMap(spec)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.Pin(filepath.Join(dir, name)); err != nil {
		t.Fatal(err)
	}
	info, err := m.Info()
	if err != nil {
		t.Fatal(err)
	}
	id, _ := info.ID()
	return id
}

// pinnedMapID returns the id of the map pinned under dir as name.
func pinnedMapID(t *testing.T, dir, name string) ebpf.MapID {
	t.Helper()
	m, err := ebpf.LoadPinnedMap(filepath.Join(dir, name), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	info, err := m.Info()
	if err != nil {
		t.Fatal(err)
	}
	id, _ := info.ID()
	return id
}

// setVersion writes v as the contract version of the state pinned in dir.
func setVersion(t *testing.T, dir string, v uint32) {
	t.Helper()
	m, err := ebpf.LoadPinnedMap(filepath.Join(dir, bpf.LastgaspMapState), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.Put(uint32(0), bpf.LastgaspSharedState{Version: v}); err != nil {
		t.Fatal(err)
	}
}

// checkVersion checks the state pinned in dir is of this contract version.
func checkVersion(t *testing.T, dir string) {
	t.Helper()
	m, err := ebpf.LoadPinnedMap(filepath.Join(dir, bpf.LastgaspMapState), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	var st bpf.LastgaspSharedState
	if err := m.Lookup(uint32(0), &st); err != nil {
		t.Fatal(err)
	}
	if st.Version != uint32(bpf.LastgaspLimitsCONTRACT_VERSION) {
		t.Errorf("pinned state of contract version %d, want %d", st.Version, bpf.LastgaspLimitsCONTRACT_VERSION)
	}
}
