package bench

import (
	"fmt"
	"net/netip"
	"testing"
	"time"
	"unsafe"

	"github.com/lastgasp/lastgasp/bpf"
	"github.com/lastgasp/lastgasp/internal/detect"
	"github.com/lastgasp/lastgasp/internal/filter"
	"github.com/lastgasp/lastgasp/internal/netconsole"
	"github.com/lastgasp/lastgasp/internal/pattern"
	"github.com/lastgasp/lastgasp/internal/testrig/packettest"
	"github.com/lastgasp/lastgasp/ringbuf"
)

// reportLineRate reports b.N lines in the benchmark's time as lines/s.
func reportLineRate(b *testing.B) {
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "lines/s")
}

// BenchmarkMatch is the Go matcher (the socket path's, and the twin of the
// XDP program's find_text and LPM lookup) on one payload.
func BenchmarkMatch(b *testing.B) {
	table := pattern.Default()
	for _, c := range []struct {
		name  string
		line  string
		match bool
	}{
		{"ordinary-basic", ordinaryBasic, false},
		{"ordinary-extended", ordinaryExtended, false},
		{"matching", matchingBasic, true},
	} {
		b.Run(c.name, func(b *testing.B) {
			payload := []byte(c.line)
			b.ReportAllocs()
			for b.Loop() {
				if _, ok := table.Match(payload); ok != c.match {
					b.Fatalf("match %v, want %v", ok, c.match)
				}
			}
			reportLineRate(b)
		})
	}
}

// BenchmarkJudge is the socket path's whole decision, filter.Filter.Judge,
// on one payload: an ordinary line with no burst open, a match (which
// opens a burst), and a line inside an open burst.
func BenchmarkJudge(b *testing.B) {
	src := netip.AddrPortFrom(packettest.NodeV4, packettest.NodePort)
	for _, c := range []struct {
		name    string
		line    string
		burst   bool // open a burst first
		forward bool
	}{
		{"ordinary", ordinaryBasic, false, false},
		{"matching", matchingBasic, false, true},
		{"context", ordinaryBasic, true, true},
	} {
		b.Run(c.name, func(b *testing.B) {
			f := filter.New(filter.Config{ContextLines: 1 << 30, BurstTimeout: 24 * time.Hour})
			now := time.Now()
			if c.burst {
				f.Judge(src, []byte(matchingBasic), now)
			}
			payload := []byte(c.line)
			b.ReportAllocs()
			for b.Loop() {
				if _, ok := f.Judge(src, payload, now); ok != c.forward {
					b.Fatalf("forward %v, want %v", ok, c.forward)
				}
			}
			reportLineRate(b)
		})
	}
}

// BenchmarkDecode is ringbuf.Decode on one raw ring buffer record (a
// match), with a fixed time stamp (as pcapscan's) and with
// ringbuf.Clock, the live reader's: time.Now, and a clock_gettime system
// call (golang.org/x/sys/unix does not go through the vDSO) once a second.
func BenchmarkDecode(b *testing.B) {
	var rec bpf.LastgaspRecord
	rec.Saddr = packettest.NodeV4.As16() // ::ffff:10.99.0.2, as the program writes it
	rec.TimeNs = 3_053_091_000
	rec.Sport, rec.Dport = packettest.NodePort, packettest.NetconsolePort
	rec.Len = uint16(copy(rec.Payload[:], matchingBasic))
	rec.WireLen = rec.Len
	rec.PatternId = 1
	rec.Flags = uint8(bpf.LastgaspRecordFlagsRECORD_MATCH)
	rec.Version = uint8(bpf.LastgaspLimitsCONTRACT_VERSION)
	// What the program sends: the head and the line, no more.
	raw := unsafe.Slice((*byte)(unsafe.Pointer(&rec)), int(unsafe.Offsetof(rec.Payload))+int(rec.Len))

	fixed := time.Now()
	var clock ringbuf.Clock
	for _, c := range []struct {
		name  string
		stamp func(uint64) time.Time
	}{
		{"fixed-stamp", func(uint64) time.Time { return fixed }},
		{"clock", clock.Stamp},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				line, err := ringbuf.Decode(raw, c.stamp)
				if err != nil || line.Flag != filter.Match || line.Source.Addr() != packettest.NodeV4 {
					b.Fatalf("decode: %+v, %v", line, err)
				}
			}
			reportLineRate(b)
		})
	}
}

// BenchmarkNetconsoleDecode decodes every datagram of a real capture (the
// whole boot log and the panic: 400-odd lines), basic and extended, with a
// fresh decoder a pass (a reused one would drop them all as duplicates).
// Reports lines/s on one core and allocations per line.
func BenchmarkNetconsoleDecode(b *testing.B) {
	for _, name := range []string{"sysrq-v4", "sysrq-ext-v4"} {
		payloads, times := capturePayloads(b, name)
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			src := netip.AddrPortFrom(packettest.NodeV4, packettest.NodePort)
			lines := 0
			for b.Loop() {
				d := netconsole.NewDecoder(netconsole.Config{})
				for i, p := range payloads {
					lines += len(d.Decode(src, p, times[i]))
				}
			}
			perLine := float64(b.Elapsed().Nanoseconds()) / float64(lines)
			b.ReportMetric(1e9/perLine, "lines/s")
			b.ReportMetric(perLine, "ns/line")
		})
	}
}

// BenchmarkAssemble runs the lines the XDP program forwards from a real
// panic (null-oops-panic: 61 lines, one incident) through a fresh
// decoder and detector a pass, incident rendering included.
func BenchmarkAssemble(b *testing.B) {
	payloads, times := capturePayloads(b, "null-oops-panic")
	f := filter.New(filter.Config{})
	src := netip.AddrPortFrom(packettest.NodeV4, packettest.NodePort)
	var lines []filter.Line
	for i, p := range payloads {
		if l, ok := f.Judge(src, p, times[i]); ok {
			lines = append(lines, l)
		}
	}
	b.ReportAllocs()
	incidents := 0
	for b.Loop() {
		asm := detect.NewAssembler(netconsole.Config{}, detect.Config{})
		for _, l := range lines {
			incidents += len(asm.Line(l))
		}
		incidents += len(asm.Flush())
	}
	if incidents != b.N {
		b.Fatalf("%d incidents in %d passes", incidents, b.N)
	}
	perLine := float64(b.Elapsed().Nanoseconds()) / float64(b.N*len(lines))
	b.ReportMetric(1e9/perLine, "lines/s")
	b.ReportMetric(perLine, "ns/line")
}

// capturePayloads returns the UDP payloads and times of a shared capture.
func capturePayloads(b *testing.B, name string) ([][]byte, []time.Time) {
	frames, err := packettest.ReadCapture("../testdata/netconsole/" + name + ".pcap")
	if err != nil {
		b.Fatal(err)
	}
	var payloads [][]byte
	var times []time.Time
	for _, c := range frames {
		payloads = append(payloads, packettest.UDPPayload(c.Frame))
		times = append(times, c.Time)
	}
	return payloads, times
}

// BenchmarkDetectorFlood: a trigger line from a new source each time,
// with the detector full (MaxOpen incidents open, each from its own
// source): every line closes the least recently heard incident to make
// room. Spoofed sources can produce exactly this; the cost a line must
// not grow with MaxOpen.
func BenchmarkDetectorFlood(b *testing.B) {
	for _, maxOpen := range []int{1_000, 100_000} {
		b.Run(fmt.Sprintf("open-%d", maxOpen), func(b *testing.B) {
			d := detect.New(detect.Config{MaxOpen: maxOpen})
			now := time.Date(2026, 11, 23, 0, 0, 0, 0, time.UTC)
			msg := func(i int) netconsole.Message {
				src := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), 6665)
				return netconsole.Message{Source: src, Received: now, Level: -1, Facility: -1, Text: "Oops: 0000 [#1] SMP"}
			}
			for i := range maxOpen {
				d.Add(msg(i))
			}
			b.ReportAllocs()
			i := maxOpen
			for b.Loop() {
				d.Add(msg(i % (1 << 24)))
				i++
			}
		})
	}
}
