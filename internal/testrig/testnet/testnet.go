// Package testnet builds throwaway networks for tests that need real
// packets: two network namespaces, a "node" and a "collector", joined by a
// veth pair, so that a test can attach an XDP program to the collector's end
// and send real UDP datagrams to it from real sockets on the node.
//
// Everything is made with iproute2 (the ip command) and removed when the
// test ends. The tests that use it need root; NewPair skips the test
// otherwise.
//
// The pair is built to make packet counts deterministic: each veth end has
// a single queue unless asked (so packets are processed in the order they
// were sent),
// no IPv6 link-local address (so no router solicitation or duplicate
// address detection is sent), IPv6 addresses that skip duplicate address
// detection, and permanent neighbour entries both ways (so no ARP or
// neighbour discovery is needed before the first datagram).
package testnet

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// NetnsDir is where iproute2 keeps its named network namespaces: the file
// NetnsDir/NAME is a handle on the namespace NAME.
const NetnsDir = "/var/run/netns"

// Netns is a network namespace named by iproute2 (ip netns add).
type Netns struct {
	// Name is the namespace's name, as in ip -n NAME.
	Name string
}

// Path returns the file that is a handle on the namespace.
func (ns *Netns) Path() string { return filepath.Join(NetnsDir, ns.Name) }

// IP runs the ip command inside the namespace (ip -n NAME args...) and
// returns its standard output.
func (ns *Netns) IP(args ...string) (string, error) {
	return runIP(append([]string{"-n", ns.Name}, args...)...)
}

// Do runs fn with the calling code's network operations inside the
// namespace: sockets fn opens and netlink requests fn makes (such as an
// XDP attach, which finds its interface in the caller's namespace) belong
// to it. Sockets opened inside keep their namespace after Do returns, and
// may be used from any goroutine.
//
// A namespace belongs to an OS thread, not to a goroutine, so fn runs on a
// goroutine of its own, locked to its thread, which enters the namespace
// first and returns to its original one after fn. If it cannot return, the
// thread stays locked and the goroutine ends, so that the Go runtime throws
// the thread away instead of running other goroutines in the wrong
// namespace. Because fn runs on another goroutine it must not call
// t.Fatal or t.FailNow: it reports failure by returning an error.
func (ns *Netns) Do(fn func() error) error {
	done := make(chan error, 1)
	go func() {
		var err error
		// Deferred first, so it runs last, even if fn panics or calls
		// runtime.Goexit: the caller never waits forever.
		defer func() { done <- err }()
		err = ns.doLocked(fn)
	}()
	return <-done
}

// doLocked is Do on the current goroutine, which it locks to its thread;
// the thread is unlocked only if it is back in its original namespace.
func (ns *Netns) doLocked(fn func() error) (err error) {
	runtime.LockOSThread()
	orig, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open the current network namespace: %w", err)
	}
	defer orig.Close()
	target, err := os.Open(ns.Path())
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open network namespace %s: %w", ns.Name, err)
	}
	defer target.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter network namespace %s: %w", ns.Name, err)
	}
	defer func() {
		if serr := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); serr != nil {
			// Left locked on purpose: see Do.
			err = errors.Join(err, fmt.Errorf("leave network namespace %s: %w", ns.Name, serr))
			return
		}
		runtime.UnlockOSThread()
	}()
	return fn()
}

// Counters returns the namespace's SNMP counters, named as nstat names
// them: /proc/net/snmp's table and field run together ("UdpRcvbufErrors",
// "IpInHdrErrors"), /proc/net/snmp6's as they are ("Udp6RcvbufErrors").
// A counter of UDP over IPv6 is in the second file only, even for a
// dual-stack socket: add both families' to count a socket's drops.
func (ns *Netns) Counters() (map[string]uint64, error) {
	var snmp, snmp6 []byte
	if err := ns.Do(func() (err error) {
		if snmp, err = os.ReadFile("/proc/thread-self/net/snmp"); err != nil {
			return err
		}
		snmp6, err = os.ReadFile("/proc/thread-self/net/snmp6")
		return err
	}); err != nil {
		return nil, fmt.Errorf("read the SNMP counters of %s: %w", ns.Name, err)
	}
	c := map[string]uint64{}
	// snmp: a line of field names, then a line of values, per table
	// ("Udp: InDatagrams NoPorts ...", "Udp: 12 0 ...").
	names := map[string][]string{}
	for line := range strings.Lines(string(snmp)) {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		table := strings.TrimSuffix(f[0], ":")
		if names[table] == nil {
			names[table] = f[1:]
			continue
		}
		for i, name := range names[table] {
			if 1+i >= len(f) {
				break
			}
			if v, err := strconv.ParseUint(f[1+i], 10, 64); err == nil {
				c[table+name] = v
			}
		}
	}
	// snmp6: a name and a value a line.
	for line := range strings.Lines(string(snmp6)) {
		if f := strings.Fields(line); len(f) == 2 {
			if v, err := strconv.ParseUint(f[1], 10, 64); err == nil {
				c[f[0]] = v
			}
		}
	}
	if _, ok := c["UdpRcvbufErrors"]; !ok {
		return nil, fmt.Errorf("the SNMP counters of %s: no UdpRcvbufErrors in /proc/net/snmp", ns.Name)
	}
	return c, nil
}

// End is one end of a Pair: a namespace and its veth interface.
type End struct {
	// Netns is the namespace the interface is in.
	Netns *Netns
	// Ifname is the veth interface's name (unique to the test).
	Ifname string
	// MAC is the interface's hardware address.
	MAC net.HardwareAddr
	// IPv4 and IPv6 are the interface's addresses, in a /24 and a /64.
	IPv4, IPv6 netip.Addr
}

// Pair is a node and a collector namespace joined by a veth pair.
type Pair struct {
	// Node sends: its addresses end in .2 and ::2.
	Node End
	// Collector receives: its addresses end in .1 and ::1.
	Collector End
}

// RequireRoot skips the test unless it runs as root with the ip command at
// hand: network namespaces, veth interfaces and XDP all need root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipped: needs root to create network namespaces and attach XDP (run the tests as root)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("skipped: needs the ip command (iproute2) to create network namespaces")
	}
}

// NewPair creates a node and a collector namespace joined by a veth pair
// with their addresses configured and links up, ready for traffic. Names
// and subnets are random, so tests may run side by side. Everything is
// removed when the test ends (deleting a namespace deletes its veth end,
// and with it the pair and any XDP program attached). It skips the test
// when not root.
func NewPair(t testing.TB) *Pair {
	t.Helper()
	return NewPairQueues(t, 1)
}

// NewPairQueues is NewPair with queues queues on each veth end instead of
// one: a frame redirected into the node's end (XDP, as the traffic
// generator sends) on CPU i goes into the collector end's receive queue
// i % queues, whose NAPI runs on that CPU, as a multi-queue NIC spreads
// its receive queues over CPUs. (A frame sent as an skb, from a socket,
// goes into the queue its transmit queue picks, or, with no XDP program
// on the collector's end, into the sending CPU's backlog: queues change
// nothing for it.) With one queue, senders on two CPUs share
// one 256-frame ring, and at millions of frames a second its overflow
// (the veth's drops, before any XDP program) is the rig's limit, not the
// receiver's. Order across queues is then not kept.
func NewPairQueues(t testing.TB, queues int) *Pair {
	t.Helper()
	RequireRoot(t)
	id := make([]byte, 3)
	rand.Read(id) // never fails (crypto/rand, Go 1.24 and later)
	// The pair's IPv4 subnet, 10.id0.id1.0/24, stays out of
	// 10.128.0.0/9, where the traffic generator's sources are: a frame
	// from the collector's own address would be dropped by its stack.
	id[0] &= 0x7f
	suffix := hex.EncodeToString(id)
	p := &Pair{
		Node: End{
			Netns:  &Netns{Name: "lastgasp-node-" + suffix},
			Ifname: "lgn-" + suffix, // IFNAMSIZ: at most 15 bytes
			MAC:    net.HardwareAddr{0x02, 0x4c, 0x47, id[0], id[1], 0x02},
			IPv4:   netip.AddrFrom4([4]byte{10, id[0], id[1], 2}),
		},
		Collector: End{
			Netns:  &Netns{Name: "lastgasp-coll-" + suffix},
			Ifname: "lgc-" + suffix,
			MAC:    net.HardwareAddr{0x02, 0x4c, 0x47, id[0], id[1], 0x01},
			IPv4:   netip.AddrFrom4([4]byte{10, id[0], id[1], 1}),
		},
	}
	// fd00:XXYY::/64, a unique local prefix.
	v6 := [16]byte{0xfd, 0x00, id[0], id[1]}
	v6[15] = 2
	p.Node.IPv6 = netip.AddrFrom16(v6)
	v6[15] = 1
	p.Collector.IPv6 = netip.AddrFrom16(v6)

	for _, ns := range []*Netns{p.Node.Netns, p.Collector.Netns} {
		if _, err := runIP("netns", "add", ns.Name); err != nil {
			t.Fatalf("create network namespace: %v", err)
		}
		t.Cleanup(func() {
			if _, err := runIP("netns", "del", ns.Name); err != nil {
				t.Errorf("delete network namespace: %v", err)
			}
		})
		// Loopback up, as on any host: the Go runtime probes for IPv6
		// support once a process, by binding to ::1 in the namespace of
		// whichever thread opens its first socket; with lo down there
		// it would conclude there is no IPv6 at all, and make every
		// later wildcard listener ("udp", ":port") IPv4 only.
		if _, err := ns.IP("link", "set", "dev", "lo", "up"); err != nil {
			t.Fatalf("set up loopback: %v", err)
		}
	}
	if err := p.setup(max(queues, 1)); err != nil {
		t.Fatalf("set up veth pair: %v", err)
	}
	return p
}

// setup creates the veth pair between the two namespaces, with queues
// queues each way, and configures it.
func (p *Pair) setup(queues int) error {
	n, c := &p.Node, &p.Collector
	// One queue each way unless asked: with several, the sender's queue
	// would be picked per socket, and packets of two sockets could be
	// handled by two CPUs at once, out of order.
	q := fmt.Sprint(queues)
	if _, err := n.Netns.IP("link", "add", n.Ifname, "address", n.MAC.String(),
		"numtxqueues", q, "numrxqueues", q,
		"type", "veth", "peer", "name", c.Ifname, "address", c.MAC.String(),
		"numtxqueues", q, "numrxqueues", q, "netns", c.Netns.Name); err != nil {
		return err
	}
	for _, e := range []*End{n, c} {
		if err := e.configure(); err != nil {
			return err
		}
	}
	// Neighbours after both links are up: taking a link down flushes them.
	if err := n.addNeighbours(c); err != nil {
		return err
	}
	return c.addNeighbours(n)
}

// configure gives e its addresses and brings its link up.
func (e *End) configure() error {
	cmds := [][]string{
		// No link-local address: nothing to solicit routers or detect
		// duplicates with, which would add packets to the count.
		{"link", "set", "dev", e.Ifname, "addrgenmode", "none"},
		{"addr", "add", e.IPv4.String() + "/24", "dev", e.Ifname},
		// nodad: usable at once, not "tentative" for a second.
		{"addr", "add", e.IPv6.String() + "/64", "dev", e.Ifname, "nodad"},
		{"link", "set", "dev", e.Ifname, "up"},
	}
	for _, args := range cmds {
		if _, err := e.Netns.IP(args...); err != nil {
			return err
		}
	}
	return nil
}

// addNeighbours makes peer's addresses permanent neighbours of e, so that
// e sends to them without ARP or neighbour discovery.
func (e *End) addNeighbours(peer *End) error {
	for _, addr := range []netip.Addr{peer.IPv4, peer.IPv6} {
		if _, err := e.Netns.IP("neigh", "add", addr.String(), "lladdr", peer.MAC.String(),
			"dev", e.Ifname, "nud", "permanent"); err != nil {
			return err
		}
	}
	return nil
}

// XDPState is what the kernel reports about the XDP program on an
// interface.
type XDPState struct {
	// Mode is how the program is attached: "native", "generic",
	// "offload", or "" if no program is.
	Mode string
	// ProgID is the kernel's id of the attached program, 0 if none.
	ProgID uint32
}

// XDP asks the kernel (ip -details link show) which XDP program is
// attached to e's interface, and how.
func (e *End) XDP() (XDPState, error) {
	out, err := e.Netns.IP("-json", "-details", "link", "show", "dev", e.Ifname)
	if err != nil {
		return XDPState{}, err
	}
	var links []struct {
		XDP *struct {
			Mode int `json:"mode"`
			Prog *struct {
				ID uint32 `json:"id"`
			} `json:"prog"`
		} `json:"xdp"`
	}
	if err := json.Unmarshal([]byte(out), &links); err != nil {
		return XDPState{}, fmt.Errorf("parse ip link output %q: %w", out, err)
	}
	if len(links) != 1 {
		return XDPState{}, fmt.Errorf("ip link show dev %s: %d links", e.Ifname, len(links))
	}
	x := links[0].XDP
	if x == nil {
		return XDPState{}, nil
	}
	// enum XDP_ATTACHED_* in linux/if_link.h.
	modes := map[int]string{0: "", 1: "native", 2: "generic", 3: "offload"}
	mode, ok := modes[x.Mode]
	if !ok {
		return XDPState{}, fmt.Errorf("ip link show dev %s: XDP attach mode %d not understood", e.Ifname, x.Mode)
	}
	s := XDPState{Mode: mode}
	if x.Prog != nil {
		s.ProgID = x.Prog.ID
	}
	return s, nil
}

// AttachXDP attaches prog to e's interface in native (driver) mode, and
// detaches it when the test ends; it fails the test if it cannot.
func (e *End) AttachXDP(t testing.TB, prog *ebpf.Program) {
	t.Helper()
	if err := e.Netns.Do(func() error {
		ifi, err := net.InterfaceByName(e.Ifname)
		if err != nil {
			return err
		}
		l, err := link.AttachXDP(link.XDPOptions{Program: prog, Interface: ifi.Index, Flags: link.XDPDriverMode})
		if err != nil {
			return fmt.Errorf("attach XDP to %s: %w", e.Ifname, err)
		}
		t.Cleanup(func() { l.Close() })
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// runIP runs the ip command and returns its standard output, or an error
// with the command line and what it wrote to standard error.
func runIP(args ...string) (string, error) {
	cmd := exec.Command("ip", args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return string(out), nil
}

// HTTPClient returns an HTTP client whose connections are made inside do
// (a Netns's Do, or a function that just calls its argument for this
// namespace): the client dials on goroutines of its own, so the dial
// itself must enter the namespace.
func HTTPClient(do func(func() error) error) *http.Client {
	dial := func(ctx context.Context, network, addr string) (conn net.Conn, err error) {
		err = do(func() error {
			conn, err = (&net.Dialer{}).DialContext(ctx, network, addr)
			return err
		})
		return conn, err
	}
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: dial}}
}

// Nft loads rules (an nft script) into the namespace's nftables, skipping
// the test where nft is not installed.
func (ns *Netns) Nft(t testing.TB, rules string) {
	t.Helper()
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("skipped: needs nft (apt-get install nftables; make deps does)")
	}
	cmd := exec.Command("ip", "netns", "exec", ns.Name, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft: %v: %s", err, out)
	}
}

// DropTCP makes the namespace's firewall drop TCP to port silently, as a
// security group or a firewall between collector and node does.
func (ns *Netns) DropTCP(t testing.TB, port int) {
	t.Helper()
	ns.Nft(t, fmt.Sprintf(`table inet lastgasp_test_drop {
	chain input {
		type filter hook input priority 0; policy accept;
		tcp dport %d drop
	}
}
`, port))
}

// AnswerTCP listens on addr:port in the namespace and accepts and closes
// every connection until the test ends: a kubelet's port, for a probe.
func (ns *Netns) AnswerTCP(t testing.TB, addr netip.Addr, port int) {
	t.Helper()
	var ln net.Listener
	if err := ns.Do(func() (err error) {
		ln, err = net.Listen("tcp", net.JoinHostPort(addr.String(), fmt.Sprint(port)))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			conn.Close()
		}
	}()
}
