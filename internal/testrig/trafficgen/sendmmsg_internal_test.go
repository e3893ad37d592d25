package trafficgen

import (
	"bytes"
	"net/netip"
	"testing"

	"github.com/lastgasp/lastgasp/internal/testrig/packettest"
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
