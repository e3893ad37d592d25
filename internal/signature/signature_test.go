package signature_test

import (
	"encoding/binary"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/lastgasp/lastgasp/internal/detect"
	"github.com/lastgasp/lastgasp/internal/filter"
	"github.com/lastgasp/lastgasp/internal/signature"
	"github.com/lastgasp/lastgasp/internal/testrig/packettest"
)

// incidents runs a real capture through the Go filter and the detector,
// as a socket collector would, and returns the incidents found.
func incidents(t *testing.T, path string) []detect.Incident {
	t.Helper()
	frames, err := packettest.ReadCapture(path)
	if err != nil {
		t.Fatal(err)
	}
	f := filter.New(filter.Config{})
	a := detect.NewAssembler(detect.Budget(0))
	var out []detect.Incident
	for _, c := range frames {
		src, payload, ok := udp(c.Frame)
		if !ok {
			continue
		}
		if l, ok := f.Judge(src, payload, c.Time); ok {
			l.Payload = slices.Clone(l.Payload)
			out = append(out, a.Line(l)...)
		}
	}
	return append(out, a.Flush()...)
}

// udp returns the source and payload of an Ethernet frame carrying UDP
// over IPv4 (no options) or IPv6 (no extension headers).
func udp(frame []byte) (netip.AddrPort, []byte, bool) {
	if len(frame) < 14 {
		return netip.AddrPort{}, nil, false
	}
	var src netip.Addr
	var l4 []byte
	switch binary.BigEndian.Uint16(frame[12:]) {
	case 0x0800:
		if len(frame) < 34 || frame[23] != 17 {
			return netip.AddrPort{}, nil, false
		}
		src, _ = netip.AddrFromSlice(frame[26:30])
		l4 = frame[34:]
	case 0x86dd:
		if len(frame) < 54 || frame[20] != 17 {
			return netip.AddrPort{}, nil, false
		}
		src, _ = netip.AddrFromSlice(frame[22:38])
		l4 = frame[54:]
	default:
		return netip.AddrPort{}, nil, false
	}
	if len(l4) < 8 {
		return netip.AddrPort{}, nil, false
	}
	n := int(binary.BigEndian.Uint16(l4[4:]))
	if n < 8 || n > len(l4) {
		return netip.AddrPort{}, nil, false
	}
	return netip.AddrPortFrom(src, binary.BigEndian.Uint16(l4)), l4[8:n], true
}

// crash is the one incident of a capture.
func crash(t *testing.T, name string) detect.Incident {
	t.Helper()
	path := filepath.Join("../../testdata/kernel", name+".pcap")
	if strings.HasPrefix(name, "netconsole/") {
		path = filepath.Join("../../testdata", name+".pcap")
	}
	incs := incidents(t, path)
	if len(incs) != 1 {
		t.Fatalf("%s: %d incidents, want 1", name, len(incs))
	}
	return incs[0]
}

// TestSameCrashOneSignature: each group is one bug recorded on several
// boots (basic and extended netconsole format, IPv4 and IPv6 senders,
// testdata/netconsole's from another recording: different boot times,
// addresses, PIDs, compiler clones); a group's captures give one
// signature, and no two groups give the same one.
func TestSameCrashOneSignature(t *testing.T) {
	groups := map[string][]string{
		"null":       {"null-panic-basic-v4", "null-panic-ext-v4", "null-panic-ext-v6", "netconsole/null-oops-panic"},
		"gpf":        {"gpf-panic-basic-v4", "gpf-panic-ext-v4"},
		"bug":        {"bug-panic-basic-v4", "bug-panic-ext-v4"},
		"hung":       {"hung-panic-basic-v4", "hung-panic-ext-v4", "hung-panic-basic-v6"},
		"softlockup": {"softlockup-panic-basic-v4", "softlockup-panic-ext-v4"},
		"sysrq":      {"sysrq-basic-v4", "sysrq-ext-v4", "sysrq-ext-v6", "netconsole/sysrq-v4", "netconsole/sysrq-ext-v4"},
		"panic":      {"panic-basic-v4", "panic-ext-v4"},
		"oom":        {"oom-panic-basic-v4", "oom-panic-ext-v4"},
		"rcustall":   {"rcustall-panic-basic-v4", "rcustall-panic-ext-v4"},
	}
	owner := map[string]string{} // signature id: group
	for group, names := range groups {
		var first signature.Signature
		for i, name := range names {
			sig := signature.Of(crash(t, name))
			t.Logf("%s: %s %q %v", name, sig.ID, sig.Cause, sig.Frames)
			if i == 0 {
				first = sig
				continue
			}
			if sig.ID != first.ID {
				t.Errorf("%s: signature %s (%q %v), %s's is %s (%q %v): the same crash", name, sig.ID, sig.Cause, sig.Frames, names[0], first.ID, first.Cause, first.Frames)
			}
		}
		if other, dup := owner[first.ID]; dup {
			t.Errorf("groups %s and %s share signature %s: different crashes", group, other, first.ID)
		}
		owner[first.ID] = group
	}
}

// TestSignatureHasFrames: a crash with a call trace is named by its
// functions, not by its cause alone.
func TestSignatureHasFrames(t *testing.T) {
	sig := signature.Of(crash(t, "null-panic-basic-v4"))
	if len(sig.Frames) == 0 || sig.Frames[0] != "crashmod_init" {
		t.Errorf("frames %v: want the fault site crashmod_init first", sig.Frames)
	}
	if !strings.HasSuffix(sig.Title, " in crashmod_init") {
		t.Errorf("title %q", sig.Title)
	}
}

func TestNormalizeCause(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"[    3.763251] BUG: kernel NULL pointer dereference, address: 0000000000000008",
			"BUG: kernel NULL pointer dereference, address: <n>"},
		{"INFO: task insmod:104 blocked for more than 120 seconds.",
			"INFO: task <task> blocked for more than <n> seconds."},
		{"watchdog: BUG: soft lockup - CPU#1 stuck for 22s! [kworker/1:2:311]",
			"watchdog: BUG: soft lockup - CPU#<n> stuck for <n>s! [<task>]"},
		{"Out of memory: Killed process 212 (memhog) total-vm:262144kB",
			"Out of memory: Killed process <task> total-vm:<n>kB"},
		{"general protection fault, probably for non-canonical address 0xdead000000000100: 0000 [#1] PREEMPT SMP NOPTI",
			"general protection fault, probably for non-canonical address <n>: <n> [#<n>] PREEMPT SMP NOPTI"},
		{"EXT4-fs error (device sda1): ext4_lookup:1855", "EXT4-fs error (device sda1): ext4_lookup:<n>"},
	} {
		if got := signature.NormalizeCause(tc.in); got != tc.want {
			t.Errorf("NormalizeCause(%q)\n got %q\nwant %q", tc.in, got, tc.want)
		}
	}
}
