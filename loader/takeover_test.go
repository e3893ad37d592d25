package loader_test

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"

	"github.com/lastgasp/lastgasp/internal/testrig/testnet"
	"github.com/lastgasp/lastgasp/loader"
)

// TestTakeOverMode restarts a collector with another XDP mode: the link
// the first pinned in native mode must not be taken over as it is (it
// was, whatever the mode asked): the new program runs in generic mode.
// In auto mode a pinned link is taken over in the mode it has, and Mode
// says which.
func TestTakeOverMode(t *testing.T) {
	pair := testnet.NewPair(t)
	dir := pinDir(t)
	prog1 := load(t, loader.Config{PinPath: dir})
	attach(t, pair, prog1, loader.ModeNative)
	if err := prog1.Close(); err != nil {
		t.Fatal(err)
	}

	prog2 := load(t, loader.Config{PinPath: dir})
	if a := attach(t, pair, prog2, loader.ModeGeneric); a.Mode != loader.ModeGeneric {
		t.Errorf("attached in mode %q, want generic", a.Mode)
	}
	expectXDP(t, pair, testnet.XDPState{Mode: "generic", ProgID: progID(t, prog2)})
	if err := prog2.Close(); err != nil {
		t.Fatal(err)
	}

	prog3 := load(t, loader.Config{PinPath: dir})
	if a := attach(t, pair, prog3, loader.ModeAuto); a.Mode != loader.ModeGeneric {
		t.Errorf("took over in auto mode: Mode %q, want generic (the pinned link's)", a.Mode)
	}
	expectXDP(t, pair, testnet.XDPState{Mode: "generic", ProgID: progID(t, prog3)})
}

// TestTakeOverLeavesWhatItCannotUpdate pins, where the collector's link
// for an interface goes, a link it cannot update that is not dead (a tcx
// link of a classifier: the kernel refuses an XDP program for it). Attach
// must fail and leave it pinned and attached: the old code unpinned and
// closed any link whose update failed, detaching a possibly live program.
func TestTakeOverLeavesWhatItCannotUpdate(t *testing.T) {
	pair := testnet.NewPair(t)
	dir := pinDir(t)
	prog := load(t, loader.Config{PinPath: dir}) // creates dir
	pin := filepath.Join(dir, "link_"+pair.Collector.Ifname)

	cls, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:         ebpf.SchedCLS,
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, -1), asm.Return()}, // TCX_NEXT
		License:      "GPL",
	})
	if err != nil {
		t.Fatal(err)
	}
	defer cls.Close()
	var l link.Link
	if err := pair.Collector.Netns.Do(func() error {
		iface, err := net.InterfaceByName(pair.Collector.Ifname)
		if err != nil {
			return err
		}
		l, err = link.AttachTCX(link.TCXOptions{Interface: iface.Index, Program: cls, Attach: ebpf.AttachTCXIngress})
		return err
	}); err != nil {
		t.Skipf("no tcx link to pin: %v", err)
	}
	defer l.Close()
	if err := l.Pin(pin); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(pin) })

	err = pair.Collector.Netns.Do(func() error {
		_, err := prog.Attach(pair.Collector.Ifname, loader.ModeNative)
		return err
	})
	if err == nil {
		t.Fatal("Attach over a link it cannot update succeeded")
	}
	t.Logf("Attach: %v", err)
	if _, err := os.Stat(pin); err != nil {
		t.Errorf("the link it could not update: %v, want it still pinned", err)
	}
	info, err := l.Info()
	if err != nil {
		t.Fatal(err)
	}
	if tcx := info.TCX(); tcx == nil || tcx.Ifindex == 0 {
		t.Errorf("the link it could not update is detached: %+v", info)
	}
}

// TestDetachStale attaches a collector to two interfaces, then restarts
// it with only one configured: DetachStale must detach and unpin the
// other interface's link, which nothing would otherwise ever remove, and
// leave the configured one's.
func TestDetachStale(t *testing.T) {
	kept, dropped := testnet.NewPair(t), testnet.NewPair(t)
	dir := pinDir(t)
	prog1 := load(t, loader.Config{PinPath: dir})
	attach(t, kept, prog1, loader.ModeNative)
	old := attach(t, dropped, prog1, loader.ModeNative)
	if err := prog1.Close(); err != nil {
		t.Fatal(err)
	}

	prog2 := load(t, loader.Config{PinPath: dir})
	attach(t, kept, prog2, loader.ModeNative)
	gone, err := prog2.DetachStale()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(gone, []string{dropped.Collector.Ifname}) {
		t.Errorf("detached %v, want [%s]", gone, dropped.Collector.Ifname)
	}
	expectXDP(t, dropped, testnet.XDPState{})
	if _, err := os.Stat(old.Pinned); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pin %s: %v, want it gone", old.Pinned, err)
	}
	expectXDP(t, kept, testnet.XDPState{Mode: "native", ProgID: progID(t, prog2)})
}
