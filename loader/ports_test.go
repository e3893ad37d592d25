package loader_test

import (
	"testing"

	"github.com/cilium/ebpf"

	"github.com/lastgasp/lastgasp/bpf"
	"github.com/lastgasp/lastgasp/internal/testrig/packettest"
	"github.com/lastgasp/lastgasp/internal/testrig/testnet"
	"github.com/lastgasp/lastgasp/loader"
)

// TestSetPortsFullTable replaces a full port table (PORTS_MAX ports) by
// another with no port in common, as a config reload may. The table once
// was a hash of PORTS_MAX entries, and SetPorts, which adds the new ports
// before it removes the old, failed with E2BIG ("key too big for map")
// on the first new port (found by FuzzKernelPortsMatchGo).
func TestSetPortsFullTable(t *testing.T) {
	testnet.RequireRoot(t)
	ports := func(first uint16) []uint16 {
		ps := make([]uint16, bpf.LastgaspLimitsPORTS_MAX)
		for i := range ps {
			ps[i] = first + uint16(i)
		}
		return ps
	}
	prog := load(t, loader.Config{Ports: ports(1000), NoContext: true, RingBufSize: 1 << 16})
	if err := prog.SetPorts(ports(2000)); err != nil {
		t.Fatalf("replace a full port table: %v", err)
	}
	for port, want := range map[uint16]uint32{999: xdpPass, 1000: xdpPass, 1063: xdpPass, 2000: xdpDrop, 2063: xdpDrop, 2064: xdpPass, 65535: xdpPass} {
		frame := packettest.UDP{DstPort: port, Payload: []byte("an ordinary line\n")}.Frame()
		verdict, err := prog.XDP().Run(&ebpf.RunOptions{Data: frame})
		if err != nil {
			t.Fatal(err)
		}
		if verdict != want {
			t.Errorf("an ordinary line to port %d: verdict %d, want %d (2000..2063 are the netconsole ports)", port, verdict, want)
		}
	}
	if err := prog.SetPorts([]uint16{65535}); err != nil {
		t.Fatal(err)
	}
	for port, want := range map[uint16]uint32{2000: xdpPass, 65535: xdpDrop} {
		verdict, err := prog.XDP().Run(&ebpf.RunOptions{Data: packettest.UDP{DstPort: port, Payload: []byte("x\n")}.Frame()})
		if err != nil {
			t.Fatal(err)
		}
		if verdict != want {
			t.Errorf("after SetPorts(65535): port %d: verdict %d, want %d", port, verdict, want)
		}
	}
}

// XDP verdicts.
const (
	xdpDrop = 1
	xdpPass = 2
)
