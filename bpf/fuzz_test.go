package bpf_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lastgasp/lastgasp/internal/filter"
	"github.com/lastgasp/lastgasp/internal/pattern"
	"github.com/lastgasp/lastgasp/internal/testrig/packettest"
	"github.com/lastgasp/lastgasp/loader"
)

// maxFuzzPayload keeps fuzzed frames within what BPF_PROG_TEST_RUN takes
// without fragments (a page less headroom).
const maxFuzzPayload = 1400

// captureFrames returns the frames of the real captures, in order.
func captureFrames(f *testing.F) [][]byte {
	f.Helper()
	paths, _ := filepath.Glob("../testdata/netconsole/*.pcap")
	var all [][]byte
	for _, path := range paths {
		frames, err := packettest.ReadCapture(path)
		if err != nil {
			f.Fatal(err)
		}
		for _, c := range frames {
			all = append(all, c.Frame)
		}
	}
	return all
}

// captureSeeds returns the UDP payloads of the real captures, plus lines
// built from every default pattern, as fuzz seeds.
func captureSeeds(f *testing.F) [][]byte {
	f.Helper()
	var seeds [][]byte
	for _, frame := range captureFrames(f) {
		seeds = append(seeds, packettest.UDPPayload(frame))
	}
	for _, p := range pattern.Default().Patterns() {
		seeds = append(seeds,
			[]byte("[    1.000000] "+p.Prefix+"\n"),
			[]byte("4,1,1,-;"+p.Prefix+"\n"),
			[]byte(p.Prefix[:len(p.Prefix)-1]))
	}
	return seeds
}

// wordEdgeSeeds returns headers that end on each side of the program's
// 8-byte words and of its inline first 32 bytes (find_text scans a word
// at a time, the first NEAR_WORDS words inline, the rest in
// first_of_far), each followed by a panic line or cut short: every
// header length from 1 to 48 bytes, in both formats, a second "[...]"
// group that crosses byte 32, and ']' or ';' as the very last byte.
func wordEdgeSeeds() [][]byte {
	const text = "Kernel panic - not syncing: Fatal exception\n"
	var seeds [][]byte
	for l := 0; l <= 48; l++ {
		digits := strings.Repeat("1", l)
		for _, h := range []string{
			"4" + digits + ";",                         // extended, ';' at byte l+1
			"4" + digits + " ;",                        // a space first: not a header
			"[" + strings.Repeat(" ", l) + "] ",        // basic, ']' at byte l+1
			"[  3.0][" + strings.Repeat("T", l) + "] ", // a second group from byte 7
		} {
			seeds = append(seeds, []byte(h+text), []byte(h), []byte(h[:len(h)-1]))
		}
	}
	return seeds
}

// FuzzKernelMatchesGo holds the kernel program's matcher against the Go
// matcher (pattern.Table.Match) on arbitrary payloads: the same pattern,
// or no match in both.
func FuzzKernelMatchesGo(f *testing.F) {
	for _, s := range append(captureSeeds(f), wordEdgeSeeds()...) {
		f.Add(s)
	}
	h := newHarness(f, loader.Config{NoContext: true})
	table := pattern.Default()
	f.Fuzz(func(t *testing.T, payload []byte) {
		if len(payload) > maxFuzzPayload {
			payload = payload[:maxFuzzPayload]
		}
		h.t = t
		_, lines := h.send(packettest.Line(string(payload)).Frame())
		want, ok := table.Match(payload)
		switch {
		case !ok && len(lines) != 0:
			t.Fatalf("%q: kernel matched pattern %d, Go matched nothing", payload, lines[0].PatternID)
		case ok && len(lines) != 1:
			t.Fatalf("%q: Go matched %q, kernel forwarded %d lines", payload, want.Prefix, len(lines))
		case ok && lines[0].PatternID != want.ID:
			t.Fatalf("%q: Go matched %d %q, kernel %d", payload, want.ID, want.Prefix, lines[0].PatternID)
		case ok && !bytes.Equal(lines[0].Payload, payload[:min(len(payload), filter.MaxPayload)]):
			t.Fatalf("%q: kernel forwarded payload %q", payload, lines[0].Payload)
		}
	})
}

// FuzzKernelBurstsMatchGo holds the kernel program's whole decision,
// bursts included, against filter.Filter on sequences of lines from three
// sources: each chunk of the input (split at '\n') is one datagram, its
// first byte choosing the source.
func FuzzKernelBurstsMatchGo(f *testing.F) {
	seeds := captureSeeds(f)
	for i := 0; i+30 < len(seeds); i += 97 {
		f.Add(bytes.Join(seeds[i:i+30], nil))
	}
	f.Add([]byte("0Kernel panic - not syncing\n1a\n0b\n0c\n2Oops: \n2d\n"))
	// One source ('[' % 3): a report, its end marker, the tail, a panic's
	// end marker (itself a match).
	f.Add([]byte("[1] Oops: \n[1] a\n[1] b\n[1] ---[ end trace 0 ]---\n[1] c\n[1] d\n[1] e\n[1] f\n[1] ---[ end Kernel panic\n[1] g\n[1] h\n[1] i\n[1] j\n"))

	const contextLines, burstLines = 3, 6
	cfg := loader.Config{ContextLines: contextLines, BurstLines: burstLines}
	if os.Geteuid() != 0 {
		f.Skip("loading BPF programs needs root")
	}
	h, err := loadHarness(cfg)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { h.sc.Close() }) // the latest h: it is replaced below
	iteration := 0
	f.Fuzz(func(t *testing.T, data []byte) {
		// Fresh sources every iteration, so that no burst of an earlier
		// input leaks into this one; a fresh program now and then, so
		// that the kernel's LRU never has to evict.
		iteration++
		if iteration%20000 == 0 {
			h.sc.Close()
			var err error
			if h, err = loadHarness(cfg); err != nil {
				t.Fatal(err)
			}
		}
		h.t = t
		twin := filter.New(filter.Config{ContextLines: contextLines, BurstLines: burstLines})
		base := uint32(iteration%5000000) * 3
		chunks := bytes.Split(data, []byte("\n"))
		if len(chunks) > 64 {
			chunks = chunks[:64]
		}
		for i, chunk := range chunks {
			srcIdx := uint32(0)
			if len(chunk) > 0 {
				srcIdx = uint32(chunk[0]) % 3
			}
			var a [4]byte
			binary.BigEndian.PutUint32(a[:], 10<<24|(base+srcIdx)&0xffffff)
			src := netip.AddrFrom4(a)
			payload := chunk
			if len(payload) > maxFuzzPayload {
				payload = payload[:maxFuzzPayload]
			}
			_, lines := h.send(packettest.UDP{Src: src, Payload: payload}.Frame())
			want, ok := twin.Judge(netip.AddrPortFrom(src, packettest.NodePort), payload, time.Now())
			got := "-"
			if len(lines) == 1 {
				got = fmt.Sprintf("%s/%d", lines[0].Flag, lines[0].PatternID)
			}
			exp := "-"
			if ok {
				exp = fmt.Sprintf("%s/%d", want.Flag, want.PatternID)
			}
			if got != exp {
				t.Fatalf("datagram %d %q from %v: kernel %s, Go %s", i, payload, src, got, exp)
			}
		}
	})
}

// FuzzKernelTablesMatchGo varies the pattern table as well as the
// payload: table holds up to 16 prefixes, one a line (cut to the longest
// a pattern may be; empty and repeated ones left out), each of kind
// "fuzz" and id its line number. The kernel's LPM trie, given the table
// with SetPatterns, must pick the same pattern as the Go matcher: nested
// prefixes (the longest wins), 64-byte patterns, patterns that start with
// '[' or a digit (which a header may look like).
func FuzzKernelTablesMatchGo(f *testing.F) {
	f.Add([]byte("Kernel\nKernel panic\nKernel panic - not syncing"), []byte("[    1.000000] Kernel panic - not syncing: x\n"))
	f.Add([]byte("Kernel\nKernel panic\nKernel panic - not syncing"), []byte("4,1,1,-;Kernel pan\n"))
	f.Add([]byte(strings.Repeat("A", 64)+"\n"+strings.Repeat("A", 63)), []byte(strings.Repeat("A", 80)))
	f.Add([]byte("[x]\n[\n[    1.0\n0,1,1,-;K"), []byte("[x] text"))
	f.Add([]byte("4,1\n42\n4"), []byte("4,1,1,-;4,1 text\n"))
	f.Add([]byte("---[ end \n---[ end Kernel panic"), []byte("[  1.0] ---[ end Kernel panic - not syncing ]---"))
	h := newHarness(f, loader.Config{NoContext: true})
	f.Fuzz(func(t *testing.T, spec, payload []byte) {
		if len(payload) > maxFuzzPayload {
			payload = payload[:maxFuzzPayload]
		}
		var ps []pattern.Pattern
		seen := map[string]bool{}
		for i, line := range bytes.SplitN(spec, []byte("\n"), 16) {
			prefix := string(line[:min(len(line), pattern.MaxPrefixLen)])
			if prefix == "" || seen[prefix] {
				continue
			}
			seen[prefix] = true
			ps = append(ps, pattern.Pattern{ID: uint32(i + 1), Prefix: prefix, Kind: "fuzz"})
		}
		table, err := pattern.NewTable(ps)
		if err != nil {
			t.Fatalf("table from %q: %v", spec, err)
		}
		h.t = t
		if err := h.sc.Program().SetPatterns(table); err != nil {
			t.Fatalf("set patterns: %v", err)
		}
		_, lines := h.send(packettest.Line(string(payload)).Frame())
		want, ok := table.Match(payload)
		got := uint32(0)
		if len(lines) == 1 {
			got = lines[0].PatternID
		}
		if len(lines) > 1 || got != want.ID || ok != (got != 0) {
			t.Fatalf("table %q, payload %q: kernel pattern %d (%d lines), Go %d %q", spec, payload, got, len(lines), want.ID, want.Prefix)
		}
	})
}
