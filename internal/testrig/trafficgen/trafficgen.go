// Package trafficgen is an in-kernel netconsole traffic generator for
// benchmarks and tests: it pushes Ethernet frames into one end of a veth
// pair faster than any socket sender can on this machine.
//
// It runs a minimal XDP program, "return bpf_redirect(ifindex, 0)", with
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
// real captures in testdata/netconsole (both formats), each batch from
// another IPv4 source address, and the real panic of a capture (every
// frame from its first matching line on, in order) from a known source at
// a known batch. The kernel's veth ring is 256 frames deep: a receiver
// that falls behind loses frames there (counted by the veth as xdp_tx
// errors), which is what a receiver's lost lines are measured against.
package trafficgen

import (
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
	"golang.org/x/sys/unix"

	"github.com/lastgasp/lastgasp/internal/pattern"
	"github.com/lastgasp/lastgasp/internal/testrig/packettest"
	"github.com/lastgasp/lastgasp/internal/testrig/testnet"
)

// Redirector is the generator's XDP program: every frame it runs on is
// counted and redirected out of one interface.
type Redirector struct {
	prog *ebpf.Program
	// sent counts the frames the program ran on: a signal can interrupt
	// BPF_PROG_TEST_RUN after some of a call's frames went out, and
	// cilium/ebpf then makes the whole call again, so the repeats asked
	// for are not what was sent.
	sent *ebpf.Map
}

// NewRedirector loads the generator's program for ifindex. The frames it
// is run on must be sent from the namespace that holds ifindex (Send
// looks the interface up in the caller's network namespace).
func NewRedirector(ifindex int) (*Redirector, error) {
	sent, err := ebpf.NewMap(&ebpf.MapSpec{Name: "lg_tg_sent", Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 1})
	if err != nil {
		return nil, fmt.Errorf("create the traffic generator's counter: %w", err)
	}
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "lg_trafficgen",
		Type: ebpf.XDP,
		Instructions: asm.Instructions{
			// sent[0] += 1, atomically (the map lookup cannot fail
			// for key 0 of a one-entry array, but the verifier
			// wants the check).
			asm.StoreImm(asm.R10, -4, 0, asm.Word),
			asm.Mov.Reg(asm.R2, asm.R10),
			asm.Add.Imm(asm.R2, -4),
			asm.LoadMapPtr(asm.R1, sent.FD()),
			asm.FnMapLookupElem.Call(),
			asm.JEq.Imm(asm.R0, 0, "redirect"),
			asm.Mov.Imm(asm.R1, 1),
			asm.StoreXAdd(asm.R0, asm.R1, asm.DWord),
			// return bpf_redirect(ifindex, flags 0): XDP_REDIRECT,
			// the frame to be transmitted out of ifindex.
			asm.Mov.Imm(asm.R1, int32(ifindex)).WithSymbol("redirect"),
			asm.Mov.Imm(asm.R2, 0),
			asm.FnRedirect.Call(),
			asm.Return(),
		},
		License: "GPL",
	})
	if err != nil {
		sent.Close()
		return nil, fmt.Errorf("load the traffic generator's XDP program: %w", err)
	}
	return &Redirector{prog: prog, sent: sent}, nil
}

// Send transmits frame repeat times (repeat >= 1; more if a signal made
// the call start again: Sent counts what went out). It must run in the
// network namespace of the interface the Redirector was made for, on a
// thread locked there.
func (r *Redirector) Send(frame []byte, repeat uint32) error {
	if repeat == 0 {
		return errors.New("send frames: repeat must be at least 1")
	}
	_, err := r.prog.Run(&ebpf.RunOptions{
		Data:   frame,
		Repeat: repeat,
		Flags:  unix.BPF_F_TEST_XDP_LIVE_FRAMES,
	})
	if err != nil {
		return fmt.Errorf("send %d frames of %d bytes (BPF_PROG_TEST_RUN, live frames): %w", repeat, len(frame), err)
	}
	return nil
}

// Sent returns how many frames the program has redirected so far.
func (r *Redirector) Sent() (uint64, error) {
	var n uint64
	if err := r.sent.Lookup(uint32(0), &n); err != nil {
		return 0, fmt.Errorf("read the traffic generator's counter: %w", err)
	}
	return n, nil
}

// Close unloads the program and its counter.
func (r *Redirector) Close() error { return errors.Join(r.prog.Close(), r.sent.Close()) }

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
	// Dst is the collector's address (the frames' destination).
	Dst netip.Addr
	// Batches of Repeat copies of one ordinary frame are sent; batch i
	// carries Corpus.Ordinary[i % len] from source Source(i % Sources).
	Batches int
	Repeat  uint32
	Sources int
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

// Source returns the i-th ordinary source address: 10.128.0.0 + i, port
// 6665. The panic source must lie outside 10.128.0.0/9.
func Source(i int) netip.AddrPort {
	n := uint32(10)<<24 | 128<<16 + uint32(i)
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)}), packettest.NodePort)
}

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
	var st Stats
	err := ns.Do(func() error {
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			return fmt.Errorf("traffic generator: %w", err)
		}
		r, err := NewRedirector(ifi.Index)
		if err != nil {
			return err
		}
		defer r.Close()
		st, err = run(ns, r, c, plan)
		return err
	})
	return st, err
}

// ordinaryFrames returns c's ordinary lines as frames to plan.Dst.
func ordinaryFrames(c *Corpus, plan Plan) [][]byte {
	frames := make([][]byte, len(c.Ordinary))
	for i, p := range c.Ordinary {
		frames[i] = packettest.UDP{Src: Source(0).Addr(), Dst: plan.Dst, Payload: p}.Frame()
	}
	return frames
}

// sendBatch sends batch i of the flood and, if plan is paced, sleeps
// until the frames sent so far are due.
func sendBatch(r *Redirector, frames [][]byte, plan Plan, i int, st *Stats, start time.Time) error {
	frame := frames[i%len(frames)]
	SetSourceV4(frame, Source(i%plan.Sources).Addr())
	if err := r.Send(frame, plan.Repeat); err != nil {
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
	for i := 0; time.Since(start) < plan.Duration; i++ {
		if err := sendBatch(r, frames, plan, i, &st, start); err != nil {
			<-panicErr
			return st, err
		}
	}
	st.PanicInFlood = panicsDone.Load()
	if err := <-panicErr; err != nil {
		return st, err
	}
	st.Panics = plan.Panics
	st.Panic = uint64(plan.Panics * len(c.Panic))
	st.Elapsed = time.Since(start)
	var err error
	st.Sent, err = r.Sent()
	return st, err
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

// SetSourceV4 rewrites the IPv4 source address of an untagged Ethernet
// frame made by packettest (a 20-byte IPv4 header at offset 14) and its
// header checksum. The UDP checksum is 0 (none), as packettest writes it.
func SetSourceV4(frame []byte, src netip.Addr) {
	ip := frame[14 : 14+20]
	a := src.As4()
	copy(ip[12:16], a[:])
	ip[10], ip[11] = 0, 0
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(ip[i])<<8 | uint32(ip[i+1])
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	ip[10], ip[11] = byte(^sum>>8), byte(^sum)
}
