// Package trafficgen is an in-kernel netconsole traffic generator for
// benchmarks and tests: it pushes Ethernet frames into one end of a veth
// pair faster than any socket sender can on this machine.
//
// It runs a small XDP program, "return bpf_redirect(ifindex, 0)" after
// writing the frame's source address (rotationProgram), with
// BPF_PROG_TEST_RUN and BPF_F_TEST_XDP_LIVE_FRAMES (as xdp-trafficgen
// does): the kernel builds each frame in a page of its own page pool, runs
// the program on it, and carries out the verdict for real, so every repeat
// of the frame is transmitted out of the interface ifindex. Out of a veth
// end, a frame goes into the peer's XDP ring as an xdp_frame, without an
// skb, and reaches the peer's XDP program: lastgasp's, or, for a socket
// receiver, a program that passes it up the stack (a veth peer accepts
// redirected frames only while an XDP program is attached to it, or GRO
// is on).
//
// The frames are netconsole lines: ordinary console lines drawn from the
// real captures in testdata/netconsole (both formats), over IPv4 or IPv6,
// each frame from the next of up to MaxSources source addresses, and the
// real panic of a capture (every frame from its first matching line on,
// in order) from a known source at a known batch. The kernel's veth ring is 256 frames deep: a receiver
// that falls behind loses frames there (counted by the veth as xdp_tx
// errors), which is what a receiver's lost lines are measured against.
package trafficgen

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/lastgasp/lastgasp/internal/pattern"
	"github.com/lastgasp/lastgasp/internal/testrig/packettest"
	"github.com/lastgasp/lastgasp/internal/testrig/testnet"
)

// MaxSources is the most source addresses one Send rotates over: 2^17,
// the low 17 bits of an IPv4 address (see rotationProgram).
const MaxSources = 1 << 17

// Redirector is the generator's XDP program: every frame it runs on is
// counted, given its source address (see rotationProgram) and redirected
// out of one interface.
type Redirector struct {
	prog *ebpf.Program
	// counters holds one genCounters: sent counts the frames the
	// program ran on (a signal can interrupt BPF_PROG_TEST_RUN after
	// some of a call's frames went out, and cilium/ebpf then makes the
	// whole call again, so the repeats asked for are not what was
	// sent); turn counts the frames given a rotated source.
	counters *ebpf.Map
}

// genCounters is the value of the Redirector's one-entry counters map.
type genCounters struct {
	Sent uint64
	Turn uint64
}

// xdpMD is the kernel's struct xdp_md, the context BPF_PROG_TEST_RUN
// takes for an XDP program: Data is where the frame starts in the data
// given, after that many bytes of metadata (the Send's configuration).
type xdpMD struct {
	Data, DataEnd, DataMeta, IngressIfindex, RxQueueIndex, EgressIfindex uint32
}

// rotationProgram returns the generator's XDP program, which redirects
// every frame out of ifindex after, if its Send asked for n > 1 sources,
// rewriting the frame's source address to the next of n:
//
//	frame ─ sent += 1
//	      ─ metadata word n (the Send's sources) > 1?  no ─────► redirect
//	      ─ k = (turn++) % n, kh = k >> 16, kl = k & 0xffff
//	      ─ EtherType (untagged frames only)
//	          0x0800 IPv4: source = its top 15 bits . kh . kl
//	                       compensating word: the Identification
//	          0x86dd IPv6: source words 6, 7 = kh, kl
//	                       compensating word: source word 5
//	          other ──────────────────────────────────────────► redirect
//	      ─ compensating word = S - new address words (one's complement),
//	        S being the sum of the compensating word and the two address
//	        words as the frame holds them
//	      ─ redirect: bpf_redirect(ifindex, 0), XDP_REDIRECT
//
// Why a checksum-neutral rewrite: the two address words change by some
// amount and the compensating word by its opposite, so the one's
// complement sum of every header the address is summed in stays what
// packettest computed: the IPv4 header checksum (which covers the
// Identification) and, for IPv6, the mandatory UDP checksum, whose
// pseudo-header covers the whole source address (the compensating word
// is part of the address). No checksum is read or written, and the
// program never touches the payload. IPv4's UDP checksum must be 0 (none,
// as packettest writes it): the Identification is not in its
// pseudo-header. An incremental update of the checksums (RFC 1624) would
// do as well, but it rewrites another field in each family (the IPv4
// header checksum; the UDP checksum, where a result of 0 must be sent as
// 0xffff): the neutral rewrite is one piece of code for both.
//
// Why from S and not from the frame as built: in live-frames mode the
// kernel copies the frame into a page of its page pool once, and a page
// that comes back for the next repeat keeps this program's last rewrite.
// S is the same for every rewrite of a frame (each one keeps the sum), so
// the result depends only on k and on the frame as built, whatever rewrite
// the page holds. RotatedSource computes the same address in Go.
//
// The Send's n travels as XDP metadata in front of the frame (the kernel
// copies it into each page with the frame; the receiver's XDP program
// sees those 4 bytes before data, and ignores them), so concurrent Sends
// of one Redirector each keep their own n. turn is shared: n frames of one Send
// in a row come from n distinct sources unless another rotating Send runs
// at the same time (the generator rotates from one thread; its panics,
// from another, are not rotated).
func rotationProgram(ifindex int, counters *ebpf.Map) asm.Instructions {
	const (
		// struct xdp_md offsets.
		mdData     = 0
		mdDataEnd  = 4
		mdDataMeta = 8
		// Offsets in an untagged Ethernet frame.
		ethType   = 12
		ip4ID     = 14 + 4  // IPv4 Identification
		ip4SrcHi  = 14 + 12 // IPv4 source, high word
		ip4End    = 14 + 20
		ip6SrcW5  = 14 + 8 + 10 // IPv6 source, word 5
		ip6SrcW6  = 14 + 8 + 12 // IPv6 source, words 6 and 7
		ip6End    = 14 + 40
		etherIPv4 = 0x0800
		etherIPv6 = 0x86dd
	)
	prog := asm.Instructions{
		// R6 = ctx; R7 = &counters[0] (the lookup cannot fail for
		// key 0 of a one-entry array, but the verifier wants the
		// check).
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.StoreImm(asm.R10, -4, 0, asm.Word),
		asm.Mov.Reg(asm.R2, asm.R10),
		asm.Add.Imm(asm.R2, -4),
		asm.LoadMapPtr(asm.R1, counters.FD()),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "redirect"),
		asm.Mov.Reg(asm.R7, asm.R0),
		// sent += 1, atomically.
		asm.Mov.Imm(asm.R1, 1),
		asm.StoreXAdd(asm.R7, asm.R1, asm.DWord),

		// R8 = n, the metadata's first word; none, or n <= 1: the
		// frame goes as it is.
		asm.LoadMem(asm.R2, asm.R6, mdDataMeta, asm.Word),
		asm.LoadMem(asm.R3, asm.R6, mdData, asm.Word),
		asm.LoadMem(asm.R4, asm.R6, mdDataEnd, asm.Word),
		asm.Mov.Reg(asm.R5, asm.R2),
		asm.Add.Imm(asm.R5, 4),
		asm.JGT.Reg(asm.R5, asm.R3, "redirect"),
		asm.LoadMem(asm.R8, asm.R2, 0, asm.Word),
		asm.JLE.Imm(asm.R8, 1, "redirect"),
		// Too short for an Ethernet header: as it is.
		asm.Mov.Reg(asm.R5, asm.R3),
		asm.Add.Imm(asm.R5, ethType+2),
		asm.JGT.Reg(asm.R5, asm.R4, "redirect"),

		// k = turn++ % n; R1 = kh, R9 = kl. Not atomic: one call's
		// frames run one after another, and two rotating Sends at
		// once only repeat some k. (cilium/ebpf v0.22.0 writes
		// asm.FetchAdd without its BPF_FETCH bit, as a plain add.)
		asm.LoadMem(asm.R9, asm.R7, 8, asm.DWord),
		asm.Mov.Reg(asm.R5, asm.R9),
		asm.Add.Imm(asm.R5, 1),
		asm.StoreMem(asm.R7, 8, asm.R5, asm.DWord),
		asm.Mod.Reg(asm.R9, asm.R8),
		asm.Mov.Reg(asm.R1, asm.R9),
		asm.RSh.Imm(asm.R1, 16),
		asm.And.Imm(asm.R9, 0xffff),

		// By EtherType: R2 = the compensating word, R3 = the two
		// address words, R8 = the bits of the high word kept.
		asm.LoadMem(asm.R5, asm.R3, ethType, asm.Half),
		asm.HostTo(asm.BE, asm.R5, asm.Half),
		asm.JEq.Imm(asm.R5, etherIPv4, "ipv4"),
		asm.JEq.Imm(asm.R5, etherIPv6, "ipv6"),
		asm.Ja.Label("redirect"), // neither: as it is
	}
	// Per family: past a bounds check, R2, R3 and R8 set from the table.
	for _, f := range []struct {
		symbol                string
		end, comp, addr, keep int32
	}{
		// IPv4 (a 20-byte header): the source's top 15 bits kept;
		// the Identification compensates.
		{"ipv4", ip4End, ip4ID, ip4SrcHi, 0xfffe},
		// IPv6: words 0-4 of the source kept; word 5 compensates.
		{"ipv6", ip6End, ip6SrcW5, ip6SrcW6, 0},
	} {
		prog = append(prog,
			asm.Mov.Reg(asm.R5, asm.R3).WithSymbol(f.symbol),
			asm.Add.Imm(asm.R5, f.end),
			asm.JGT.Reg(asm.R5, asm.R4, "redirect"),
			asm.Mov.Reg(asm.R2, asm.R3),
			asm.Add.Imm(asm.R2, f.comp),
			asm.Add.Imm(asm.R3, f.addr),
			asm.Mov.Imm(asm.R8, f.keep),
			asm.Ja.Label("rewrite"),
		)
	}
	return append(prog,
		// R0 = S = compensating + high + low word (host order).
		asm.LoadMem(asm.R0, asm.R2, 0, asm.Half).WithSymbol("rewrite"),
		asm.HostTo(asm.BE, asm.R0, asm.Half),
		asm.LoadMem(asm.R4, asm.R3, 0, asm.Half),
		asm.HostTo(asm.BE, asm.R4, asm.Half),
		asm.LoadMem(asm.R5, asm.R3, 2, asm.Half),
		asm.HostTo(asm.BE, asm.R5, asm.Half),
		asm.Add.Reg(asm.R0, asm.R4),
		asm.Add.Reg(asm.R0, asm.R5),
		// R4 = the new high word: kept bits | kh; the low word is kl.
		asm.And.Reg(asm.R4, asm.R8),
		asm.Or.Reg(asm.R4, asm.R1),
		// R0 = S - high - low: adding a word's complement (0xffff ^ w)
		// subtracts it in one's complement arithmetic.
		asm.Mov.Reg(asm.R5, asm.R4),
		asm.Xor.Imm(asm.R5, 0xffff),
		asm.Add.Reg(asm.R0, asm.R5),
		asm.Mov.Reg(asm.R5, asm.R9),
		asm.Xor.Imm(asm.R5, 0xffff),
		asm.Add.Reg(asm.R0, asm.R5),
		// Fold the carries back in (R0 < 5 * 2^16, so after one fold
		// R0 <= 0xffff + 4, and a last carry is taken off as 0xffff):
		// a value in 1..0xffff, the same for every rewrite of the
		// frame.
		asm.Mov.Reg(asm.R5, asm.R0),
		asm.RSh.Imm(asm.R5, 16),
		asm.And.Imm(asm.R0, 0xffff),
		asm.Add.Reg(asm.R0, asm.R5),
		asm.JLE.Imm(asm.R0, 0xffff, "store"),
		asm.Sub.Imm(asm.R0, 0xffff),
		// Store the three words, in network order.
		asm.HostTo(asm.BE, asm.R0, asm.Half).WithSymbol("store"),
		asm.StoreMem(asm.R2, 0, asm.R0, asm.Half),
		asm.HostTo(asm.BE, asm.R4, asm.Half),
		asm.StoreMem(asm.R3, 0, asm.R4, asm.Half),
		asm.HostTo(asm.BE, asm.R9, asm.Half),
		asm.StoreMem(asm.R3, 2, asm.R9, asm.Half),

		// return bpf_redirect(ifindex, flags 0): XDP_REDIRECT, the
		// frame to be transmitted out of ifindex.
		asm.Mov.Imm(asm.R1, int32(ifindex)).WithSymbol("redirect"),
		asm.Mov.Imm(asm.R2, 0),
		asm.FnRedirect.Call(),
		asm.Return(),
	)
}

// NewRedirector loads the generator's program for ifindex. The frames it
// is run on must be sent from the namespace that holds ifindex (Send
// looks the interface up in the caller's network namespace).
func NewRedirector(ifindex int) (*Redirector, error) {
	counters, err := ebpf.NewMap(&ebpf.MapSpec{Name: "lg_tg_counters", Type: ebpf.Array, KeySize: 4, ValueSize: 16, MaxEntries: 1})
	if err != nil {
		return nil, fmt.Errorf("create the traffic generator's counters: %w", err)
	}
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         "lg_trafficgen",
		Type:         ebpf.XDP,
		Instructions: rotationProgram(ifindex, counters),
		License:      "GPL",
	})
	if err != nil {
		counters.Close()
		return nil, fmt.Errorf("load the traffic generator's XDP program: %w", err)
	}
	return &Redirector{prog: prog, counters: counters}, nil
}

// Send transmits frame repeat times (repeat >= 1; more if a signal made
// the call start again: Sent counts what went out), from the source it
// was built with. It must run in the network namespace of the interface
// the Redirector was made for, on a thread locked there.
func (r *Redirector) Send(frame []byte, repeat uint32) error {
	return r.SendFrom(frame, repeat, 1)
}

// SendFrom is Send with each frame from the next of sources source
// addresses, in turn (1 <= sources <= MaxSources): the k-th is
// RotatedSource(the frame's source, k), k counted across the
// Redirector's rotating sends. The frame must be untagged Ethernet with
// IPv4 (a 20-byte header, UDP checksum 0) or IPv6, as packettest builds it.
func (r *Redirector) SendFrom(frame []byte, repeat uint32, sources int) error {
	if repeat == 0 {
		return errors.New("send frames: repeat must be at least 1")
	}
	if sources < 1 || sources > MaxSources {
		return fmt.Errorf("send frames: %d sources, want 1 to %d", sources, MaxSources)
	}
	opts := &ebpf.RunOptions{Data: frame, Repeat: repeat, Flags: unix.BPF_F_TEST_XDP_LIVE_FRAMES}
	if sources > 1 {
		if err := rotatable(frame); err != nil {
			return fmt.Errorf("send frames from %d sources: %w", sources, err)
		}
		// The metadata: n, in host order, in front of the frame.
		data := binary.NativeEndian.AppendUint32(make([]byte, 0, 4+len(frame)), uint32(sources))
		opts.Data = append(data, frame...)
		opts.Context = xdpMD{Data: 4, DataEnd: uint32(len(opts.Data))}
	}
	if _, err := r.prog.Run(opts); err != nil {
		return fmt.Errorf("send %d frames of %d bytes (BPF_PROG_TEST_RUN, live frames): %w", repeat, len(frame), err)
	}
	return nil
}

// rotatable returns why the program could not rotate frame's source
// keeping its checksums valid, or nil.
func rotatable(frame []byte) error {
	if len(frame) < 14 {
		return fmt.Errorf("a frame of %d bytes has no Ethernet header", len(frame))
	}
	switch binary.BigEndian.Uint16(frame[12:]) {
	case packettest.EtherIPv4:
		if len(frame) < 14+20+8 || frame[14] != 0x45 || frame[14+9] != packettest.ProtoUDP {
			return errors.New("want an IPv4 header of 20 bytes and UDP")
		}
		if frame[14+20+6] != 0 || frame[14+20+7] != 0 {
			return errors.New("an IPv4 frame's UDP checksum must be 0 (none): the rewrite keeps only the IPv4 header's")
		}
	case packettest.EtherIPv6:
		if len(frame) < 14+40 {
			return fmt.Errorf("an IPv6 frame of %d bytes is too short", len(frame))
		}
	default:
		return fmt.Errorf("EtherType %#04x: want untagged IPv4 or IPv6", binary.BigEndian.Uint16(frame[12:]))
	}
	return nil
}

// RotatedSource returns the source address the generator's program
// writes into the k-th frame (0 <= k < MaxSources) of a frame built with
// source base (see rotationProgram): for IPv4, base's top 15 bits and k;
// for IPv6, base's words 0-4, a compensating word 5, and k in words 6-7.
func RotatedSource(base netip.Addr, k int) netip.Addr {
	kh, kl := uint32(k>>16), uint32(k&0xffff)
	if base.Is4() {
		a := base.As4()
		hi := uint32(a[0])<<8 | uint32(a[1])
		hi = hi&0xfffe | kh
		return netip.AddrFrom4([4]byte{byte(hi >> 8), byte(hi), byte(kl >> 8), byte(kl)})
	}
	a := base.As16()
	word := func(i int) uint32 { return uint32(binary.BigEndian.Uint16(a[2*i:])) }
	sum := word(5) + word(6) + word(7) + (0xffff ^ kh) + (0xffff ^ kl)
	sum = sum&0xffff + sum>>16
	sum = sum&0xffff + sum>>16
	binary.BigEndian.PutUint16(a[10:], uint16(sum))
	binary.BigEndian.PutUint16(a[12:], uint16(kh))
	binary.BigEndian.PutUint16(a[14:], uint16(kl))
	return netip.AddrFrom16(a)
}

// Sent returns how many frames the program has redirected so far.
func (r *Redirector) Sent() (uint64, error) {
	var c genCounters
	if err := r.counters.Lookup(uint32(0), &c); err != nil {
		return 0, fmt.Errorf("read the traffic generator's counters: %w", err)
	}
	return c.Sent, nil
}

// Close unloads the program and its counters.
func (r *Redirector) Close() error { return errors.Join(r.prog.Close(), r.counters.Close()) }

// PassProgram loads an XDP program that passes every frame up the stack
// (XDP_PASS): attached to a veth end it lets that end accept the
// generator's redirected frames, for a socket receiver behind it.
func PassProgram() (*ebpf.Program, error) {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         "lg_pass",
		Type:         ebpf.XDP,
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 2 /* XDP_PASS */), asm.Return()},
		License:      "GPL",
	})
	if err != nil {
		return nil, fmt.Errorf("load an XDP_PASS program: %w", err)
	}
	return prog, nil
}

// Corpus is what the generator sends: ordinary lines and one real panic.
type Corpus struct {
	// Ordinary are UDP payloads of ordinary console lines (matching no
	// pattern of pattern.Default), basic and extended format mixed.
	Ordinary [][]byte
	// Panic are the payloads of a real panic, in the order sent: every
	// datagram of the capture from its first matching line on.
	Panic [][]byte
}

// Captures of testdata/netconsole the corpus is drawn from.
var (
	ordinaryCaptures = []string{"healthy.pcap", "sysrq-ext-v4.pcap", "sysrq-v4.pcap"}
	panicCapture     = "null-oops-panic.pcap"
)

// LoadCorpus reads the corpus from dir (testdata/netconsole).
func LoadCorpus(dir string) (*Corpus, error) {
	table := pattern.Default()
	c := &Corpus{}
	for _, name := range ordinaryCaptures {
		lines, err := payloads(filepath.Join(dir, name))
		if err != nil {
			return nil, err
		}
		for _, p := range lines {
			if _, ok := table.Match(p); ok {
				// The rest of this capture is its failure: not
				// ordinary.
				break
			}
			c.Ordinary = append(c.Ordinary, p)
		}
	}
	lines, err := payloads(filepath.Join(dir, panicCapture))
	if err != nil {
		return nil, err
	}
	for _, p := range lines {
		if _, ok := table.Match(p); ok || len(c.Panic) > 0 {
			c.Panic = append(c.Panic, p)
		}
	}
	if len(c.Ordinary) == 0 || len(c.Panic) == 0 {
		return nil, fmt.Errorf("corpus from %s: %d ordinary lines, %d panic lines: want some of each", dir, len(c.Ordinary), len(c.Panic))
	}
	return c, nil
}

// payloads returns the non-empty UDP payloads of a capture, in order.
func payloads(path string) ([][]byte, error) {
	frames, err := packettest.ReadCapture(path)
	if err != nil {
		return nil, err
	}
	var out [][]byte
	for _, f := range frames {
		if p := packettest.UDPPayload(f.Frame); len(p) > 0 {
			out = append(out, p)
		}
	}
	return out, nil
}

// Plan is one run of the generator.
type Plan struct {
	// Dst is the collector's address (the frames' destination); DstV6
	// its IPv6 address, for the IPv6 share of the frames.
	Dst, DstV6 netip.Addr
	// Batches of Repeat copies of one ordinary frame are sent; batch i
	// carries Corpus.Ordinary[i % len], each copy from the next of
	// Sources sources (1 to MaxSources; the generator's program writes
	// each frame's source): Source(k) over IPv4, SourceV6(k) over IPv6.
	Batches int
	Repeat  uint32
	Sources int
	// IPv6Share (0 to 1) is the share of the batches sent over IPv6 (to
	// DstV6, with their UDP checksum, as a socket's stack wants it),
	// spread evenly among the IPv4 ones.
	IPv6Share float64
	// PanicAt is the batch at whose start the panic is sent, one frame a
	// line, in order, from PanicSource, PanicInterval apart, by a
	// second thread while the flood goes on: the panic arrives inside
	// the flood, not in a pause of it (a call of BPF_PROG_TEST_RUN with
	// repeat > 1 costs about a millisecond besides its frames, a pause
	// in which a socket receiver drains its buffer).
	PanicAt       int
	PanicSource   netip.AddrPort
	PanicInterval time.Duration
	// Rate, if set, paces the flood to about this many frames a second
	// on average: after each batch the generator sleeps until the
	// frames sent so far are due. Each batch still goes out as a burst
	// at the kernel's speed, so keep Repeat small against Rate.
	Rate float64
	// PanicInline sends the panic from the flood's own thread instead,
	// before batch PanicAt, in a pause of the flood: one sender, so
	// the collector's veth ring, drained on the sender's CPU, does not
	// overflow (for tests that count every frame).
	PanicInline bool
	// Duration, if set, makes the flood time-bound instead: batches are
	// sent until Duration has passed (Batches is ignored), and Panics
	// panics are sent by a second thread at known times, panic k from
	// PanicSourceN(k) starting at Duration*(0.1 + 0.8*k/Panics), so every
	// one lies inside the flood. PanicAt and PanicInline are ignored.
	Duration time.Duration
	Panics   int
	// Threads, for a timed plan, is how many threads send the flood
	// (default 1), each its share of the batches (batch i by thread
	// i % Threads) at its share of Rate. One thread a CPU, on a pair
	// with a queue a CPU (testnet.NewPairQueues), offers more than one
	// CPU can: the generator, not the receiver, is otherwise the limit
	// of an XDP receiver.
	Threads int
}

// PanicSourceN returns the source of the k-th panic of a timed plan: the
// plan's PanicSource with k added to its address.
func (p Plan) PanicSourceN(k int) netip.AddrPort {
	a := p.PanicSource.Addr()
	for range k {
		a = a.Next()
	}
	return netip.AddrPortFrom(a, p.PanicSource.Port())
}

// Source returns the i-th ordinary IPv4 source address (i < MaxSources):
// 10.128.0.0 + i, port 6665. The panic source must lie outside
// 10.128.0.0/9.
func Source(i int) netip.AddrPort {
	return netip.AddrPortFrom(RotatedSource(sourceBaseV4, i), packettest.NodePort)
}

// SourceV6 returns the i-th ordinary IPv6 source address (i <
// MaxSources), port 6665: fd00:128::/64 with i in its last 32 bits.
func SourceV6(i int) netip.AddrPort {
	return netip.AddrPortFrom(RotatedSource(sourceBaseV6, i), packettest.NodePort)
}

// The bases of the ordinary sources (RotatedSource). The frames are built
// with source 0, so that an unrotated frame comes from Source(0) or
// SourceV6(0) too (rotating keeps the sum RotatedSource starts from).
var (
	sourceBaseV4 = netip.MustParseAddr("10.128.0.0")
	sourceBaseV6 = netip.MustParseAddr("fd00:128::")
)

// Stats is what a run sent.
type Stats struct {
	Ordinary uint64 // ordinary frames asked for (repeats)
	Panic    uint64 // panic frames sent
	// Sent is what the generator's program counted: every frame sent,
	// the repeats of calls a signal interrupted and restarted included.
	Sent uint64
	// PanicInFlood is set when the last panic frame went out before the
	// flood's last batch began: the whole panic was inside the flood.
	PanicInFlood bool
	// Panics is how many panics were sent whole; PanicTimes when each
	// one's first frame went out, from the start of the flood.
	Panics     int
	PanicTimes []time.Duration
	Elapsed    time.Duration
}

// Offered returns the frames per second offered over the run.
func (s Stats) Offered() float64 {
	return float64(s.Sent) / s.Elapsed.Seconds()
}

// RunFrom sends plan's frames of c out of the interface ifname of ns (a
// Redirector of its own, made and closed there): the frames arrive at its
// veth peer. The flood runs on one thread and the panic on another, both
// in ns.
func RunFrom(ns *testnet.Netns, ifname string, c *Corpus, plan Plan) (Stats, error) {
	if plan.Sources <= 0 {
		plan.Sources = 1
	}
	if plan.Sources > MaxSources || plan.IPv6Share < 0 || plan.IPv6Share > 1 || (plan.IPv6Share > 0 && !plan.DstV6.Is6()) {
		return Stats{}, fmt.Errorf("traffic generator: plan of %d sources (at most %d), IPv6 share %v to %v: want an IPv6 DstV6 for a share in (0, 1]", plan.Sources, MaxSources, plan.IPv6Share, plan.DstV6)
	}
	var st Stats
	err := OnInterface(ns, ifname, func(r *Redirector) (err error) {
		st, err = run(ns, r, c, plan)
		return err
	})
	return st, err
}

// OnInterface runs fn in ns, on a thread locked there, with a Redirector
// for ns's interface ifname, closed when fn returns: the frames fn sends
// arrive at the interface's veth peer. The Redirector is kept in the
// kernel's XDP dispatcher meanwhile (keepDispatched). What closing and
// releasing it meet is returned joined to fn's error.
func OnInterface(ns *testnet.Netns, ifname string, fn func(*Redirector) error) error {
	return ns.Do(func() (err error) {
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			return fmt.Errorf("traffic generator: %w", err)
		}
		r, err := NewRedirector(ifi.Index)
		if err != nil {
			return err
		}
		// Cleaning up's errors join fn's (or keepDispatched's).
		defer func() { err = errors.Join(err, r.Close()) }()
		release, err := r.keepDispatched(ns)
		if err != nil {
			return err
		}
		defer func() { err = errors.Join(err, release()) }()
		return fn(r)
	})
}

// keeperSeq numbers the keepers' interfaces (unique in the process, so
// in every namespace).
var keeperSeq atomic.Uint64

// keepDispatched attaches r's program (generic mode) to a veth pair of its
// own in ns, left down, until release is called (which returns what
// detaching and deleting the pair met), so that no frame ever
// reaches it there. Why: a live-frames BPF_PROG_TEST_RUN call with repeat
// > 1 adds its program to the kernel's XDP dispatcher and takes it out
// again at the end (bpf_prog_change_xdp), and each change rewrites the
// dispatcher and waits for the other CPUs: about 25 ms a call on this VM
// under load, against 12 µs for 64 frames once the program is already
// in the dispatcher, as an attached program is (the calls then only count
// a reference).
func (r *Redirector) keepDispatched(ns *testnet.Netns) (release func() error, err error) {
	n := keeperSeq.Add(1)
	keeper, peer := fmt.Sprintf("lgtgk%d", n), fmt.Sprintf("lgtgp%d", n)
	if _, err := ns.IP("link", "add", keeper, "type", "veth", "peer", "name", peer); err != nil {
		return nil, fmt.Errorf("traffic generator: a veth pair to keep its program dispatched: %w", err)
	}
	remove := func() error { // deletes the peer too
		if _, err := ns.IP("link", "del", keeper); err != nil {
			return fmt.Errorf("traffic generator: delete the veth pair that kept its program dispatched: %w", err)
		}
		return nil
	}
	ifi, err := net.InterfaceByName(keeper)
	if err != nil {
		return nil, errors.Join(fmt.Errorf("traffic generator: %w", err), remove())
	}
	l, err := link.AttachXDP(link.XDPOptions{Program: r.prog, Interface: ifi.Index, Flags: link.XDPGenericMode})
	if err != nil {
		return nil, errors.Join(fmt.Errorf("traffic generator: keep its program dispatched (attach to %s): %w", keeper, err), remove())
	}
	return func() error {
		var detach error
		if err := l.Close(); err != nil {
			detach = fmt.Errorf("traffic generator: detach its program from %s: %w", keeper, err)
		}
		return errors.Join(detach, remove())
	}, nil
}

// floodFrames are the ordinary lines as frames, by family.
type floodFrames struct{ v4, v6 [][]byte }

// ordinaryFrames returns c's ordinary lines as frames to plan.Dst (and,
// if plan has an IPv6 share, to plan.DstV6), from the first source.
func ordinaryFrames(c *Corpus, plan Plan) floodFrames {
	var f floodFrames
	for _, p := range c.Ordinary {
		f.v4 = append(f.v4, packettest.UDP{Src: Source(0).Addr(), Dst: plan.Dst, Payload: p}.Frame())
		if plan.IPv6Share > 0 {
			f.v6 = append(f.v6, packettest.UDP{Src: SourceV6(0).Addr(), Dst: plan.DstV6, Payload: p, UDPChecksum: true}.Frame())
		}
	}
	return f
}

// sendBatch sends batch i of the flood and, if plan is paced, sleeps
// until the frames sent so far are due.
func sendBatch(r *Redirector, frames floodFrames, plan Plan, i int, st *Stats, start time.Time) error {
	frame := frames.v4[i%len(frames.v4)]
	// Batch i is IPv6 when the share, summed over the batches, passes
	// another whole batch with it.
	if share := plan.IPv6Share; share > 0 && int(float64(i+1)*share) > int(float64(i)*share) {
		frame = frames.v6[i%len(frames.v6)]
	}
	if err := r.SendFrom(frame, plan.Repeat, plan.Sources); err != nil {
		return err
	}
	st.Ordinary += uint64(plan.Repeat)
	if plan.Rate > 0 {
		due := start.Add(time.Duration(float64(st.Ordinary) / plan.Rate * float64(time.Second)))
		time.Sleep(time.Until(due))
	}
	return nil
}

// run is RunFrom inside ns.
func run(ns *testnet.Netns, r *Redirector, c *Corpus, plan Plan) (Stats, error) {
	if plan.Duration > 0 {
		return runTimed(ns, r, c, plan)
	}
	frames := ordinaryFrames(c, plan)
	var st Stats
	var panicDone atomic.Bool
	panicErr := make(chan error, 1)
	started := false
	start := time.Now()
	for i := range plan.Batches {
		if i == plan.PanicAt && plan.PanicInline {
			if err := sendPanic(r, c, plan); err != nil {
				return st, err
			}
			st.Panic = uint64(len(c.Panic))
		} else if i == plan.PanicAt {
			started = true
			go func() {
				panicErr <- ns.Do(func() error {
					defer panicDone.Store(true)
					return sendPanic(r, c, plan)
				})
			}()
		}
		if i == plan.Batches-1 && started {
			st.PanicInFlood = panicDone.Load()
		}
		if err := sendBatch(r, frames, plan, i, &st, start); err != nil {
			return st, err
		}
	}
	if started {
		if err := <-panicErr; err != nil {
			return st, err
		}
		st.Panic = uint64(len(c.Panic))
		st.Panics = 1
	}
	if plan.PanicInline && plan.PanicAt < plan.Batches {
		st.Panics = 1
	}
	st.Elapsed = time.Since(start)
	var err error
	st.Sent, err = r.Sent()
	return st, err
}

// runTimed is run for a plan with a Duration: the flood until Duration
// has passed, Panics panics from a second thread at their known times.
func runTimed(ns *testnet.Netns, r *Redirector, c *Corpus, plan Plan) (Stats, error) {
	frames := ordinaryFrames(c, plan)
	var st Stats
	var panicsDone atomic.Bool
	panicErr := make(chan error, 1)
	start := time.Now()
	go func() {
		panicErr <- ns.Do(func() error {
			defer panicsDone.Store(true)
			for k := range plan.Panics {
				at := time.Duration(float64(plan.Duration) * (0.1 + 0.8*float64(k)/float64(plan.Panics)))
				time.Sleep(time.Until(start.Add(at)))
				st.PanicTimes = append(st.PanicTimes, time.Since(start))
				p := plan
				p.PanicSource = plan.PanicSourceN(k)
				if err := sendPanic(r, c, p); err != nil {
					return err
				}
			}
			return nil
		})
	}()
	threads := max(plan.Threads, 1)
	paced := plan
	paced.Rate = plan.Rate / float64(threads)
	sent := make([]Stats, threads) // each thread's count of ordinary frames
	floodErr := make(chan error, threads)
	for t := 1; t < threads; t++ {
		go func() {
			floodErr <- ns.Do(func() error { return flood(r, frames, paced, t, threads, &sent[t], start) })
		}()
	}
	err := flood(r, frames, paced, 0, threads, &sent[0], start)
	for t := 1; t < threads; t++ {
		err = errors.Join(err, <-floodErr)
	}
	for _, s := range sent {
		st.Ordinary += s.Ordinary
	}
	if err != nil {
		<-panicErr
		return st, err
	}
	st.PanicInFlood = panicsDone.Load()
	if err := <-panicErr; err != nil {
		return st, err
	}
	st.Panics = plan.Panics
	st.Panic = uint64(plan.Panics * len(c.Panic))
	st.Elapsed = time.Since(start)
	st.Sent, err = r.Sent()
	return st, err
}

// flood sends batches t, t+threads, t+2*threads, ... of a timed plan
// until its Duration has passed since start, counting them in st.
func flood(r *Redirector, frames floodFrames, plan Plan, t, threads int, st *Stats, start time.Time) error {
	for i := t; time.Since(start) < plan.Duration; i += threads {
		if err := sendBatch(r, frames, plan, i, st, start); err != nil {
			return err
		}
	}
	return nil
}

// sendPanic sends the panic's frames from plan.PanicSource, one call each,
// PanicInterval apart.
func sendPanic(r *Redirector, c *Corpus, plan Plan) error {
	for _, p := range c.Panic {
		pf := packettest.UDP{Src: plan.PanicSource.Addr(), SrcPort: plan.PanicSource.Port(), Dst: plan.Dst, Payload: p}.Frame()
		if err := r.Send(pf, 1); err != nil {
			return err
		}
		time.Sleep(plan.PanicInterval)
	}
	return nil
}

// TxDropped returns the TX drops of the veth end ifname in ns (ip -s
// link): for a veth this includes the frames redirected into it that its
// peer's XDP ring had no room for (the peer's peer_tq_xdp_xmit_err), which
// is where frames are lost when the receiver falls behind the generator.
func TxDropped(ns *testnet.Netns, ifname string) (uint64, error) {
	out, err := ns.IP("-json", "-s", "link", "show", "dev", ifname)
	if err != nil {
		return 0, err
	}
	var links []struct {
		Stats64 struct {
			TX struct {
				Dropped uint64 `json:"dropped"`
			} `json:"tx"`
		} `json:"stats64"`
	}
	if err := json.Unmarshal([]byte(out), &links); err != nil || len(links) != 1 {
		return 0, fmt.Errorf("ip -s link show dev %s: %q not understood: %v", ifname, out, err)
	}
	return links[0].Stats64.TX.Dropped, nil
}
