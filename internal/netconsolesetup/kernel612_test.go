package netconsolesetup_test

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/lastgasp/lastgasp/internal/netconsole"
	"github.com/lastgasp/lastgasp/internal/testrig/kernelrig"
	"github.com/lastgasp/lastgasp/internal/testrig/packettest"
)

// TestKernelUserdata runs "lastgasp netconsole-setup --node-name
// worker-612" (a static build, made now) in Debian's 6.12 kernel under
// qemu, the first Debian kernel with netconsole userdata (6.9+), then
// panics the guest. Each record the collector receives must end in the
// userdata line " node=worker-612", and lastgasp's decoder must give the
// panic's Node and its kernel release. 6.12 has no sysdata (6.15+; its
// release and msgid fields came later still): the release comes from the
// target's "release" prepend (6.5+), which netconsole-setup turns on
// instead, and no record has a msgid; so lost messages are counted from
// the records' sequence numbers, which must have no gap from the first
// record after the setup to the panic. One record is long enough to be
// fragmented with its userdata: it must be reassembled with the node.
func TestKernelUserdata(t *testing.T) {
	rig := &kernelrig.Rig{Release: kernelrig.KernelRelease612, NoCrashmod: true, Log: t.Logf}
	res, out := bootScript(t, rig, "userdata-612", "guest612.sh")
	if got := out["lg-setup"]; len(got) == 0 || got[0] != "exit 0" {
		t.Errorf("netconsole-setup: %q", got)
	}
	if got, want := out["lg-target"], []string{"enabled=1 extended=1 release=1 node=worker-612"}; !slices.Equal(got, want) {
		t.Errorf("target: %q, want %q", got, want)
	}
	t.Logf("userdata/: %q", out["lg-userdata"])

	frames, err := packettest.ReadCapture(res.Pcap)
	if err != nil {
		t.Fatal(err)
	}
	src := netip.AddrPortFrom(netip.MustParseAddr(kernelrig.NodeIPv4), kernelrig.NodePort)
	dec := netconsole.NewDecoder(netconsole.Config{})
	var (
		msgs     []netconsole.Message
		panicRaw string
		records  int
		frags    int
	)
	for _, f := range frames {
		p := gopacket.NewPacket(f.Frame, layers.LayerTypeEthernet, gopacket.Default)
		ip4, _ := p.NetworkLayer().(*layers.IPv4)
		udp, _ := p.Layer(layers.LayerTypeUDP).(*layers.UDP)
		if ip4 == nil || udp == nil || ip4.SrcIP.String() != kernelrig.NodeIPv4 || ip4.DstIP.String() != kernelrig.CollectorIPv4 ||
			udp.SrcPort != kernelrig.NodePort || udp.DstPort != kernelrig.CollectorPort {
			continue
		}
		payload := string(udp.Payload)
		records++
		// Every record ends in the target's userdata, but the fragments
		// of the long one ("ncfrag=OFFSET/LEN" in the header), which
		// carry it once, in the last.
		header, _, _ := strings.Cut(payload, ";")
		if strings.Contains(header, ",ncfrag=") {
			frags++
			t.Logf("a fragment's header and tail: %q ... %q", header, payload[max(len(payload)-30, 0):])
		} else if !strings.HasSuffix(payload, "\n node=worker-612\n") {
			t.Errorf("a record without the userdata line: %q", payload)
		}
		if strings.Contains(payload, "Kernel panic - not syncing") && panicRaw == "" {
			panicRaw = payload
		}
		msgs = append(msgs, dec.Decode(src, udp.Payload, f.Time)...)
	}
	if panicRaw == "" {
		t.Fatalf("no panic among %d records", records)
	}
	t.Logf("the panic as sent: %q", panicRaw)
	for _, sysdata := range []string{"\n release=", "\n msgid="} {
		if strings.Contains(panicRaw, sysdata) {
			t.Errorf("6.12 sent sysdata %q, which it has no code for: the test's premise is wrong", sysdata)
		}
	}

	var panicMsg, long *netconsole.Message
	for i, m := range msgs {
		if m.Node != "worker-612" || m.Release != kernelrig.KernelRelease612 || m.HasMsgID || !m.HasSeq {
			t.Errorf("decoded: node %q release %q msgid %v seq %v: %q", m.Node, m.Release, m.HasMsgID, m.HasSeq, m.Text)
		}
		if i > 0 && m.Seq != msgs[i-1].Seq+1 {
			t.Errorf("lost: record %d follows %d", m.Seq, msgs[i-1].Seq)
		}
		if strings.HasPrefix(m.Text, "lg-long: ") {
			long = &msgs[i]
		}
		if panicMsg == nil && strings.HasPrefix(m.Text, "Kernel panic - not syncing") {
			panicMsg = &msgs[i]
		}
	}
	if panicMsg == nil {
		t.Fatalf("the decoder gave no panic among %d messages", len(msgs))
	}
	if frags < 2 || long == nil || long.Text != "lg-long: "+strings.Repeat("y", 950) {
		t.Errorf("the long record: %d fragments, decoded %+v", frags, long)
	}
	if c := dec.Counters(); c.Reassembled != 1 || c.Malformed != 0 || c.FragmentsExpired != 0 || c.FragmentsRefused != 0 || c.Duplicates != 0 {
		t.Errorf("decoder counters %+v", c)
	}
	t.Logf("%d fragments of the long record reassembled", frags)
	t.Logf("%d records, %d messages, seq %d..%d; the panic: seq %d node %q release %q",
		records, len(msgs), msgs[0].Seq, msgs[len(msgs)-1].Seq, panicMsg.Seq, panicMsg.Node, panicMsg.Release)
}
