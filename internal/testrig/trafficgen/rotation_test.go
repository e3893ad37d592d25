package trafficgen_test

import (
	"bytes"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/lastgasp/lastgasp/internal/testrig/packettest"
	"github.com/lastgasp/lastgasp/internal/testrig/testnet"
	"github.com/lastgasp/lastgasp/internal/testrig/trafficgen"
)

// sourceCounter loads an XDP program that puts the source address of
// every untagged IPv4 or IPv6 frame into a hash map (key the address as
// 16 bytes, IPv4 in its last 4, value unused) and drops the frame: the
// map's keys are the distinct sources that reached it.
func sourceCounter(t *testing.T) (*ebpf.Program, *ebpf.Map) {
	t.Helper()
	seen, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Hash, KeySize: 16, ValueSize: 4, MaxEntries: 2 * trafficgen.MaxSources})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { seen.Close() })
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type: ebpf.XDP,
		Instructions: asm.Instructions{
			// R2 = data, R3 = data_end; the key (16 bytes at
			// fp-16) zeroed, the value (fp-20) 0.
			asm.LoadMem(asm.R2, asm.R1, 0, asm.Word),
			asm.LoadMem(asm.R3, asm.R1, 4, asm.Word),
			asm.Mov.Imm(asm.R4, 0),
			asm.StoreMem(asm.R10, -8, asm.R4, asm.DWord),
			asm.StoreMem(asm.R10, -16, asm.R4, asm.DWord),
			asm.StoreMem(asm.R10, -20, asm.R4, asm.Word),
			asm.Mov.Reg(asm.R4, asm.R2),
			asm.Add.Imm(asm.R4, 14+40),
			asm.JGT.Reg(asm.R4, asm.R3, "drop"), // shorter than the IPv6 header: no frame of ours
			asm.LoadMem(asm.R4, asm.R2, 12, asm.Half),
			asm.HostTo(asm.BE, asm.R4, asm.Half),
			asm.JEq.Imm(asm.R4, packettest.EtherIPv6, "ipv6"),
			asm.JNE.Imm(asm.R4, packettest.EtherIPv4, "drop"),
			// IPv4 source (offset 26) into the key's last 4 bytes.
			asm.LoadMem(asm.R4, asm.R2, 26, asm.Word),
			asm.StoreMem(asm.R10, -4, asm.R4, asm.Word),
			asm.Ja.Label("insert"),
			// IPv6 source (offset 22), all 16 bytes.
			asm.LoadMem(asm.R4, asm.R2, 22, asm.DWord).WithSymbol("ipv6"),
			asm.StoreMem(asm.R10, -16, asm.R4, asm.DWord),
			asm.LoadMem(asm.R4, asm.R2, 30, asm.DWord),
			asm.StoreMem(asm.R10, -8, asm.R4, asm.DWord),
			// seen[key] = 0
			asm.LoadMapPtr(asm.R1, seen.FD()).WithSymbol("insert"),
			asm.Mov.Reg(asm.R2, asm.R10),
			asm.Add.Imm(asm.R2, -16),
			asm.Mov.Reg(asm.R3, asm.R10),
			asm.Add.Imm(asm.R3, -20),
			asm.Mov.Imm(asm.R4, 0), // BPF_ANY
			asm.FnMapUpdateElem.Call(),
			asm.Mov.Imm(asm.R0, 1).WithSymbol("drop"), // XDP_DROP
			asm.Return(),
		},
		License: "GPL",
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { prog.Close() })
	return prog, seen
}

// passingPair returns a new pair whose collector end passes every frame
// up its stack (trafficgen.PassProgram), for a socket receiver there.
func passingPair(t *testing.T) *testnet.Pair {
	t.Helper()
	pair := testnet.NewPair(t)
	pass, err := trafficgen.PassProgram()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pass.Close() })
	pair.Collector.AttachXDP(t, pass)
	return pair
}

// sendFrom sends frame repeat times from sources sources, in calls of at
// most chunk frames, from a Redirector of pair's node end.
func sendFrom(t *testing.T, pair *testnet.Pair, frame []byte, repeat, chunk, sources int, pause time.Duration) uint64 {
	t.Helper()
	var sent uint64
	if err := trafficgen.OnInterface(pair.Node.Netns, pair.Node.Ifname, func(r *trafficgen.Redirector) (err error) {
		for done := 0; done < repeat; done += chunk {
			if err := r.SendFrom(frame, uint32(min(chunk, repeat-done)), sources); err != nil {
				return err
			}
			time.Sleep(pause)
		}
		sent, err = r.Sent()
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return sent
}

// TestRotationReachesEverySource sends, for each family, two rounds of a
// frame rotated over 100,000 sources through the generator into a
// receiver's XDP program that collects the sources it sees: it must see
// exactly RotatedSource(base, k) for every k < 100,000, and nothing else.
func TestRotationReachesEverySource(t *testing.T) {
	const n = 100_000
	for _, base := range []netip.Addr{trafficgen.Source(0).Addr(), trafficgen.SourceV6(0).Addr()} {
		t.Run(base.String(), func(t *testing.T) {
			pair := testnet.NewPair(t)
			prog, seen := sourceCounter(t)
			pair.Collector.AttachXDP(t, prog)
			dst := pair.Collector.IPv4
			if base.Is6() {
				dst = pair.Collector.IPv6
			}
			frame := packettest.UDP{Src: base, Dst: dst, Payload: []byte("6,1,2,-;a line\n"), UDPChecksum: base.Is6()}.Frame()
			// Two rounds: a frame the veth ring had no room for
			// comes around again.
			sent := sendFrom(t, pair, frame, 2*n, 10_000, n, time.Millisecond)
			dropped, err := trafficgen.TxDropped(pair.Node.Netns, pair.Node.Ifname)
			if err != nil {
				t.Fatal(err)
			}
			want := map[netip.Addr]bool{}
			for k := range n {
				want[trafficgen.RotatedSource(base, k)] = true
			}
			if len(want) != n {
				t.Fatalf("RotatedSource gives %d distinct addresses for %d k", len(want), n)
			}
			var key [16]byte
			var val uint32
			got, unexpected := 0, 0
			for it := seen.Iterate(); it.Next(&key, &val); {
				a := netip.AddrFrom16(key)
				if a.IsUnspecified() {
					// The node's own MLD reports (it has no
					// link-local address to send them from).
					continue
				}
				if base.Is4() {
					a = netip.AddrFrom4([4]byte(key[12:]))
				}
				if want[a] {
					got++
				} else if unexpected++; unexpected < 5 {
					t.Errorf("a source not rotated to: %v", a)
				}
			}
			t.Logf("%d frames sent, %d dropped in the veth ring: %d distinct sources seen", sent, dropped, got)
			if got != n || unexpected > 0 {
				t.Errorf("the receiver saw %d of the %d sources and %d others", got, n, unexpected)
			}
		})
	}
}

// TestRotatedFramesPassTheStack sends frames rotated over 1,000 sources,
// for each family, into a collector end with an XDP_PASS program and a UDP
// socket behind it: the socket must get every frame from every source,
// and the stack count no checksum error (the IPv4 header checksum and
// IPv6's mandatory UDP checksum still valid after the rewrite), where it
// counts the one frame sent first with its checksum broken.
func TestRotatedFramesPassTheStack(t *testing.T) {
	const n, rounds = 1000, 3
	for _, family := range []string{"udp4", "udp6"} {
		t.Run(family, func(t *testing.T) {
			pair := passingPair(t)
			base, dst := trafficgen.Source(0).Addr(), pair.Collector.IPv4
			if family == "udp6" {
				base, dst = trafficgen.SourceV6(0).Addr(), pair.Collector.IPv6
			}
			var conn *net.UDPConn
			if err := pair.Collector.Netns.Do(func() (err error) {
				conn, err = net.ListenUDP(family, net.UDPAddrFromAddrPort(netip.AddrPortFrom(dst, packettest.NetconsolePort)))
				return err
			}); err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			got := map[netip.Addr]int{}
			done := make(chan error, 1)
			go func() {
				buf := make([]byte, 2048)
				for range n * rounds {
					conn.SetReadDeadline(time.Now().Add(5 * time.Second))
					_, src, err := conn.ReadFromUDPAddrPort(buf)
					if err != nil {
						done <- err
						return
					}
					got[src.Addr().Unmap()]++
				}
				done <- nil
			}()
			frame := packettest.UDP{Src: base, Dst: dst, Payload: []byte("6,1,2,-;a line\n"), UDPChecksum: family == "udp6"}.Frame()
			// The control: one frame with its checksum broken (the
			// IPv4 header's, or the UDP one over IPv6) is counted,
			// and not delivered.
			broken := bytes.Clone(frame)
			if family == "udp4" {
				broken[14+10] ^= 0xff
			} else {
				broken[14+40+6] ^= 0xff
			}
			sendFrom(t, pair, broken, 1, 1, 1, 10*time.Millisecond)
			if errs := csumErrors(t, pair.Collector.Netns); errs != 1 {
				t.Fatalf("the collector's stack counted %d checksum errors for the broken frame, want 1", errs)
			}
			// 25 frames a call, 2 ms apart: within the socket's
			// default buffer (212,992 bytes; a datagram from a
			// redirected frame takes a page of it).
			sendFrom(t, pair, frame, n*rounds, 25, n, 2*time.Millisecond)
			if err := <-done; err != nil {
				t.Errorf("after %d datagrams from %d sources: %v", sum(got), len(got), err)
			}
			for k := range n {
				if src := trafficgen.RotatedSource(base, k); got[src] != rounds {
					t.Errorf("source %v: %d datagrams, want %d", src, got[src], rounds)
					break
				}
			}
			if errs := csumErrors(t, pair.Collector.Netns); errs != 1 {
				t.Errorf("the collector's stack counted %d checksum errors for the rotated frames", errs-1)
			}
			t.Logf("%d datagrams from %d sources", sum(got), len(got))
		})
	}
}

func sum(m map[netip.Addr]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

// csumErrors returns ns's checksum error counters added up: IPv4 header
// (Ip InHdrErrors), UDP over IPv4 (Udp InCsumErrors) and over IPv6
// (Udp6InCsumErrors).
func csumErrors(t *testing.T, ns *testnet.Netns) uint64 {
	t.Helper()
	c, err := ns.Counters()
	if err != nil {
		t.Fatal(err)
	}
	return c["IpInHdrErrors"] + c["UdpInCsumErrors"] + c["Udp6InCsumErrors"]
}
