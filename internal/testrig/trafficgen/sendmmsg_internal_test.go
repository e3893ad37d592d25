package trafficgen

import (
	"bytes"
	"net/netip"
	"testing"
	"time"

	"github.com/lastgasp/lastgasp/internal/testrig/packettest"
	"github.com/lastgasp/lastgasp/internal/testrig/testnet"
)

// TestRewriteSourceV4 checks the sendmmsg sender's in-place source
// rewrite against packettest building the frame from that source: the
// same bytes, header checksum included, for sources whose words carry
// and those that do not.
func TestRewriteSourceV4(t *testing.T) {
	dst := netip.MustParseAddr("10.99.0.1")
	frame := packettest.UDP{Src: Source(0).Addr(), Dst: dst, Payload: []byte("[    3.044631] RAX: 0\n")}.Frame()
	for _, src := range []netip.Addr{
		Source(1).Addr(), Source(65_535).Addr(), Source(99_999).Addr(),
		netip.MustParseAddr("255.255.255.254"), netip.MustParseAddr("0.0.0.1"), Source(0).Addr(),
	} {
		rewriteSourceV4(frame, src)
		want := packettest.UDP{Src: src, Dst: dst, Payload: []byte("[    3.044631] RAX: 0\n")}.Frame()
		if !bytes.Equal(frame, want) {
			t.Errorf("source %v: frame\n%x\nwant\n%x", src, frame, want)
		}
	}
}

// TestSendCountsMidBatchDropOnce sends one sendmmsg batch whose second
// frame the veth drops (longer than its peer's MTU allows: the node end
// takes it, the collector end refuses it, and the sender gets ENOBUFS):
// send must report all four frames taken, and the veth must have dropped
// exactly one, that is, the dropped frame is not sent again. (sendmmsg
// returns a short count for an error after the first message, and the
// error itself is lost: nothing is left in SO_ERROR.)
func TestSendCountsMidBatchDropOnce(t *testing.T) {
	pair := testnet.NewPair(t)
	if _, err := pair.Collector.Netns.IP("link", "set", "dev", pair.Collector.Ifname, "mtu", "1000"); err != nil {
		t.Fatal(err)
	}
	dst := pair.Collector.IPv4
	small := packettest.UDP{Src: Source(0).Addr(), Dst: dst, Payload: []byte("6,1,2,-;a line\n")}.Frame()
	big := packettest.UDP{Src: Source(0).Addr(), Dst: dst, Payload: bytes.Repeat([]byte("x"), 1200)}.Frame()
	frames := [][]byte{small, big, small, small}
	b := newMmsgBatch(len(frames), len(big))
	for i, f := range frames {
		copy(b.frames[i], f)
		b.iovs[i].SetLen(len(f))
	}
	var taken int
	if err := pair.Node.Netns.Do(func() error {
		s, err := openPacketSocket(pair.Node.Ifname)
		if err != nil {
			return err
		}
		defer s.close()
		taken, err = s.send(b, len(frames))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	dropped, err := TxDropped(pair.Node.Netns, pair.Node.Ifname)
	if err != nil {
		t.Fatal(err)
	}
	if taken != len(frames) || dropped != 1 {
		t.Errorf("send took %d of %d frames, the veth dropped %d: want all taken, 1 dropped", taken, len(frames), dropped)
	}
}

// TestSendmmsgFromRefusesTooManySources checks that the sendmmsg sender
// refuses a plan of more than MaxSources sources (Source(i) would leave
// 10.128.0.0/15) before it opens anything.
func TestSendmmsgFromRefusesTooManySources(t *testing.T) {
	plan := Plan{Dst: netip.MustParseAddr("10.99.0.1"), Duration: time.Millisecond, Sources: MaxSources + 1}
	if _, err := SendmmsgFrom(nil, "", &Corpus{}, plan); err == nil {
		t.Errorf("a plan of %d sources: no error", plan.Sources)
	}
	if got := Source(MaxSources - 1).Addr(); got != netip.MustParseAddr("10.129.255.255") {
		t.Errorf("the last source is %v, want 10.129.255.255", got)
	}
}
