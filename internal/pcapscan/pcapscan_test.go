package pcapscan_test

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"

	"github.com/lastgasp/lastgasp/internal/filter"
	"github.com/lastgasp/lastgasp/internal/pattern"
	"github.com/lastgasp/lastgasp/internal/pcapscan"
	"github.com/lastgasp/lastgasp/internal/testrig/packettest"
	"github.com/lastgasp/lastgasp/loader"
)

const fixtures = "../../testdata/netconsole"

func newScanner(t *testing.T) *pcapscan.Scanner {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("loading BPF programs needs root")
	}
	sc, err := pcapscan.New(loader.Config{RingBufSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sc.Close() })
	return sc
}

func scanFile(t *testing.T, path string) ([]filter.Line, pcapscan.Stats) {
	t.Helper()
	sc := newScanner(t)
	var lines []filter.Line
	st, err := sc.File(path, func(l filter.Line) {
		l.Payload = bytes.Clone(l.Payload)
		lines = append(lines, l)
	})
	if err != nil {
		t.Fatalf("scan %s: %v", path, err)
	}
	return lines, st
}

// TestCaptures runs every real capture through the program and checks the
// lines it forwards: the right patterns, each line exactly as the kernel
// printed it on its serial console, and the same sequence, bursts
// included, as the Go filter picks from the same packets.
func TestCaptures(t *testing.T) {
	want := map[string][]string{ // capture -> kinds of the matched lines
		"healthy":         nil,
		"warn-alive":      {"warning"},
		"null-oops-alive": {"oops", "oops"},
		"null-oops-panic": {"oops", "oops", "panic"},
		"sysrq-v4":        {"sysrq", "panic"},
		"sysrq-ext-v4":    {"sysrq", "panic"},
	}
	paths, _ := filepath.Glob(filepath.Join(fixtures, "*.pcap"))
	if len(paths) != len(want) {
		t.Fatalf("found %d captures in %s, want %d", len(paths), fixtures, len(want))
	}
	table := pattern.Default()
	for _, path := range paths {
		name := strings.TrimSuffix(filepath.Base(path), ".pcap")
		t.Run(name, func(t *testing.T) {
			lines, st := scanFile(t, path)
			var kinds []string
			for _, l := range lines {
				if l.Flag == filter.Match {
					p, _ := table.ByID(l.PatternID)
					kinds = append(kinds, string(p.Kind))
				}
				if l.Source != netip.MustParseAddrPort("10.99.0.2:6665") {
					t.Errorf("line from %v, want 10.99.0.2:6665", l.Source)
				}
			}
			if !slices.Equal(kinds, want[name]) {
				t.Errorf("matched kinds %v, want %v", kinds, want[name])
			}
			if len(want[name]) == 0 && len(lines) != 0 {
				t.Errorf("%d lines forwarded from a healthy node, want none", len(lines))
			}

			console := consoleTexts(t, strings.TrimSuffix(path, ".pcap")+".console.log")
			for _, l := range lines {
				text := strings.TrimRight(string(l.Payload[pattern.TextStart(l.Payload):]), "\n")
				if text != "" && !console[text] {
					t.Errorf("forwarded %q: not a line of the kernel's console", text)
				}
			}

			twin := goFilter(t, path)
			if len(twin) != len(lines) {
				t.Fatalf("kernel forwarded %d lines, Go filter %d", len(lines), len(twin))
			}
			for i := range lines {
				k, g := lines[i], twin[i]
				if k.Flag != g.Flag || k.PatternID != g.PatternID || !bytes.Equal(k.Payload, g.Payload) || !k.Time.Equal(g.Time) {
					t.Errorf("line %d: kernel %s/%d %q at %v, Go %s/%d %q at %v", i, k.Flag, k.PatternID, k.Payload, k.Time, g.Flag, g.PatternID, g.Payload, g.Time)
				}
			}

			if st.Skipped != 0 || st.Forwarded != len(lines) {
				t.Errorf("stats %+v with %d lines", st, len(lines))
			}
		})
	}
}

// TestCaptureCounters checks the counters of a whole capture add up.
func TestCaptureCounters(t *testing.T) {
	sc := newScanner(t)
	st, err := sc.File(filepath.Join(fixtures, "null-oops-panic.pcap"), func(filter.Line) {})
	if err != nil {
		t.Fatal(err)
	}
	c, err := sc.Program().Counters()
	if err != nil {
		t.Fatal(err)
	}
	n := uint64(st.Packets)
	if c.Packets != n || c.Netconsole != n || c.Dropped != n || c.Passed != 0 ||
		c.Matched+c.Context != uint64(st.Forwarded) || c.Malformed != 0 {
		t.Errorf("counters %+v after %+v: want every packet a dropped netconsole line", c, st)
	}
}

// consoleTexts returns the message texts of a serial console log.
func consoleTexts(t *testing.T, path string) map[string]bool {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	texts := map[string]bool{}
	for _, line := range strings.Split(string(data), "\n") {
		line = strings.TrimRight(line, "\r")
		texts[line[pattern.TextStart([]byte(line)):]] = true
	}
	return texts
}

// goFilter runs a capture's UDP payloads through filter.Filter.
func goFilter(t *testing.T, path string) []filter.Line {
	t.Helper()
	f := filter.New(filter.Config{})
	var out []filter.Line
	for _, c := range readCapture(t, path) {
		src, _ := netip.AddrFromSlice(c.Frame[26:30])
		port := binary.BigEndian.Uint16(c.Frame[34:])
		if l, ok := f.Judge(netip.AddrPortFrom(src, port), packettest.UDPPayload(c.Frame), c.Time); ok {
			l.Payload = bytes.Clone(l.Payload)
			out = append(out, l)
		}
	}
	return out
}

func readCapture(t *testing.T, path string) []packettest.Captured {
	t.Helper()
	frames, err := packettest.ReadCapture(path)
	if err != nil {
		t.Fatal(err)
	}
	return frames
}

// TestBadFiles checks a file that is not a capture, or is cut short, gives
// a clear error, after the lines that could be read.
func TestBadFiles(t *testing.T) {
	dir := t.TempDir()
	notPcap := filepath.Join(dir, "not.pcap")
	os.WriteFile(notPcap, []byte("this is a text file, not a capture\n"), 0o644)
	empty := filepath.Join(dir, "empty.pcap")
	os.WriteFile(empty, nil, 0o644)

	full, err := os.ReadFile(filepath.Join(fixtures, "null-oops-panic.pcap"))
	if err != nil {
		t.Fatal(err)
	}
	cut := filepath.Join(dir, "cut.pcap")
	os.WriteFile(cut, full[:len(full)-100], 0o644) // ends inside the last record

	sc := newScanner(t)
	for _, path := range []string{notPcap, empty, filepath.Join(dir, "missing.pcap")} {
		if _, err := sc.File(path, func(filter.Line) {}); err == nil {
			t.Errorf("%s: no error", filepath.Base(path))
		} else {
			t.Logf("%s: %v", filepath.Base(path), err)
		}
	}
	n := 0
	st, err := sc.File(cut, func(filter.Line) { n++ })
	if err == nil || !strings.Contains(err.Error(), "after") {
		t.Errorf("truncated capture: error %v, want one saying where it stopped", err)
	}
	if st.Packets < 400 || n == 0 {
		t.Errorf("truncated capture: %d packets, %d lines read before the error; want all but the last", st.Packets, n)
	}
}

// TestOtherFormats checks pcapng and Linux cooked (SLL) captures give the
// same lines as the Ethernet pcap they were made from.
func TestOtherFormats(t *testing.T) {
	src := filepath.Join(fixtures, "sysrq-v4.pcap")
	want, _ := scanFile(t, src)
	dir := t.TempDir()

	ng := filepath.Join(dir, "sysrq.pcapng")
	writeCapture(t, ng, src, func(w io.Writer) (func([]byte, time.Time) error, func() error) {
		nw, err := pcapgo.NewNgWriter(w, layers.LinkTypeEthernet)
		if err != nil {
			t.Fatal(err)
		}
		return func(frame []byte, at time.Time) error {
			return nw.WritePacket(gopacket.CaptureInfo{Timestamp: at, CaptureLength: len(frame), Length: len(frame)}, frame)
		}, nw.Flush
	})

	sll := filepath.Join(dir, "sysrq-sll.pcap")
	writeCapture(t, sll, src, func(w io.Writer) (func([]byte, time.Time) error, func() error) {
		pw := pcapgo.NewWriter(w)
		if err := pw.WriteFileHeader(65535, layers.LinkTypeLinuxSLL); err != nil {
			t.Fatal(err)
		}
		return func(frame []byte, at time.Time) error {
			// SLL: packet type, ARPHRD_ETHER, address length, address,
			// protocol; then the frame without its Ethernet header.
			h := make([]byte, 16)
			binary.BigEndian.PutUint16(h[2:], 1)
			binary.BigEndian.PutUint16(h[4:], 6)
			copy(h[6:], frame[6:12])
			copy(h[14:], frame[12:14])
			pkt := append(h, frame[14:]...)
			return pw.WritePacket(gopacket.CaptureInfo{Timestamp: at, CaptureLength: len(pkt), Length: len(pkt)}, pkt)
		}, func() error { return nil }
	})

	for _, path := range []string{ng, sll} {
		got, _ := scanFile(t, path)
		if len(got) != len(want) {
			t.Errorf("%s: %d lines, want %d", filepath.Base(path), len(got), len(want))
			continue
		}
		for i := range got {
			if got[i].Flag != want[i].Flag || !bytes.Equal(got[i].Payload, want[i].Payload) || !got[i].Time.Equal(want[i].Time) {
				t.Errorf("%s line %d: %q, want %q", filepath.Base(path), i, got[i].Payload, want[i].Payload)
			}
		}
	}
}

// writeCapture copies the frames of src into a new capture at path, in the
// format that open sets up.
func writeCapture(t *testing.T, path, src string, open func(io.Writer) (func([]byte, time.Time) error, func() error)) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	bw := bufio.NewWriter(f)
	write, flush := open(bw)
	for _, c := range readCapture(t, src) {
		if err := write(c.Frame, c.Time); err != nil {
			t.Fatal(err)
		}
	}
	if err := flush(); err != nil {
		t.Fatal(err)
	}
	if err := bw.Flush(); err != nil {
		t.Fatal(err)
	}
}
