package bench

import (
	"fmt"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/lastgasp/lastgasp/internal/testrig/testnet"
	"github.com/lastgasp/lastgasp/internal/testrig/trafficgen"
)

// The feeds of scenario 1: how a row's frames reach its receiver (the
// "feed" field of flood.json).
const (
	// feedLive is the in-kernel generator (trafficgen.RunFrom):
	// BPF_PROG_TEST_RUN live frames redirected into the node's veth end,
	// in bursts at the kernel's speed; the socket receivers sit behind
	// an XDP_PASS program on the collector's end, which the veth needs to
	// take redirected frames.
	feedLive = "live-frames"
	// feedSendmmsg is the sendmmsg sender (trafficgen.SendmmsgFrom):
	// prebuilt frames on an AF_PACKET socket, mmsgBatch a call paced
	// (mmsgTopBatch unpaced), arriving as skbs on a collector end with
	// no XDP program, paced by the receive path itself: a socket
	// receiver's deployment, and its fairer feed.
	feedSendmmsg = "sendmmsg"
)

// mmsgReceivers are the receivers also fed by the sendmmsg sender: the
// socket ones (XDP mode is measured with the live frames, the only feed
// fast enough for it).
var mmsgReceivers = []string{"socket", "socket-64m", "recvmmsg"}

// Frames a sendmmsg call: 64 while paced (a burst a default socket
// buffer of 212,992 bytes holds), 256 at the top rate (fewer calls).
const (
	mmsgBatch    = 64
	mmsgTopBatch = 256
)

// mmsgRates are the offered rates asked of the sendmmsg feed, short or
// full (BENCH_FULL=1), as floodConfig's rates are of the live frames; 0
// is its top rate, unpaced (near 1 Mpps here, a tenth of the live
// frames').
func mmsgRates() []float64 {
	if os.Getenv("BENCH_FULL") != "" {
		return []float64{25e3, 50e3, 100e3, 200e3, 300e3, 400e3, 600e3, 0}
	}
	return []float64{50e3, 100e3, 200e3, 400e3, 0}
}

// mmsgPlan is the sendmmsg sender's plan for one row: floodPlan's corpus,
// sources, panics and pacing, in calls of mmsgBatch frames, all over IPv4
// (the sendmmsg sender writes IPv4 frames only).
func mmsgPlan(rate float64, d time.Duration, panics int) trafficgen.Plan {
	p := floodPlan(rate, d, panics)
	p.IPv6Share = 0
	p.Repeat = mmsgBatch
	if rate == 0 {
		p.Repeat = mmsgTopBatch
	}
	return p
}

// floodReceiver builds receiver name on pair's collector end for feed:
// the sendmmsg feed's socket receivers without the XDP_PASS program the
// live frames need, on the collector's IPv4 address (the sendmmsg sender
// sends IPv4).
func floodReceiver(b *testing.B, name, feed string, pair *testnet.Pair) receiver {
	if feed == feedSendmmsg {
		return newSocketReceiver(b, name, pair.Collector.Netns, netip.AddrPortFrom(pair.Collector.IPv4, 6666).String())
	}
	return newReceiver(b, name, pair)
}

// sendFeed sends plan's frames of corpus from pair's node end by feed.
func sendFeed(feed string, pair *testnet.Pair, corpus *trafficgen.Corpus, plan trafficgen.Plan) (trafficgen.Stats, error) {
	switch feed {
	case feedLive:
		return trafficgen.RunFrom(pair.Node.Netns, pair.Node.Ifname, corpus, plan)
	case feedSendmmsg:
		return trafficgen.SendmmsgFrom(pair.Node.Netns, pair.Node.Ifname, corpus, plan)
	}
	return trafficgen.Stats{}, fmt.Errorf("no feed %q", feed)
}
