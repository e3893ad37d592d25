package netconsole

import (
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lastgasp/lastgasp/internal/testrig/packettest"
)

var (
	node = netip.MustParseAddrPort("10.99.0.2:6665")
	t0   = time.Date(2026, 11, 22, 17, 55, 28, 0, time.UTC)
)

// TestCaptures decodes every real capture and checks each message against
// the kernel's serial console log of the same run: same text, same kernel
// time, in the same order.
func TestCaptures(t *testing.T) {
	paths, _ := filepath.Glob("../../testdata/netconsole/*.pcap")
	if len(paths) == 0 {
		t.Fatal("no captures")
	}
	for _, path := range paths {
		t.Run(filepath.Base(path), func(t *testing.T) {
			frames, err := packettest.ReadCapture(path)
			if err != nil {
				t.Fatal(err)
			}
			console := consoleLines(t, strings.TrimSuffix(path, ".pcap")+".console.log")
			d := NewDecoder(Config{})
			var msgs []Message
			for _, f := range frames {
				msgs = append(msgs, d.Decode(node, packettest.UDPPayload(f.Frame), f.Time)...)
			}
			if len(msgs) < 300 {
				t.Fatalf("%d messages from %d datagrams", len(msgs), len(frames))
			}
			// Every message is a console line, in order (the console may
			// hold lines netconsole did not send: those before it loaded
			// are replayed, later ones may be lost as the kernel dies).
			// The first kernel line shares its console line with the
			// BIOS's escape sequences, hence the suffix.
			j := 0
			for i, m := range msgs {
				want := fmt.Sprintf("[%5d.%06d] %s", m.Uptime/time.Second, (m.Uptime%time.Second)/time.Microsecond, m.Text)
				for j < len(console) && !strings.HasSuffix(console[j], want) {
					j++
				}
				if j == len(console) {
					t.Fatalf("message %d %q (extended %v): not found in order on the console", i, want, m.Extended)
				}
				if !m.HasUptime || m.Source != node {
					t.Errorf("message %d: %+v", i, m)
				}
			}
			if c := d.Counters(); c.Malformed != 0 || c.Duplicates != 0 || c.InvalidUTF8 != 0 {
				t.Errorf("counters %+v", c)
			}
		})
	}
}

func consoleLines(t *testing.T, path string) []string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.ReplaceAll(string(data), "\r", ""), "\n")
}

func decodeOne(t *testing.T, d *Decoder, payload string) Message {
	t.Helper()
	msgs := d.Decode(node, []byte(payload), t0)
	if len(msgs) != 1 {
		t.Fatalf("%q: %d messages, want 1", payload, len(msgs))
	}
	return msgs[0]
}

func TestExtended(t *testing.T) {
	d := NewDecoder(Config{})
	m := decodeOne(t, d, "6,389,3330270,-,caller=T1;sysrq: Trigger a crash\n SUBSYSTEM=platform\n DEVICE=+platform:serial8250\n")
	if !m.Extended || m.Level != 6 || m.Facility != 0 || m.Seq != 389 || m.Uptime != 3330270*time.Microsecond ||
		m.Caller != "T1" || m.Text != "sysrq: Trigger a crash" || m.Dict["SUBSYSTEM"] != "platform" || m.Dict["DEVICE"] != "+platform:serial8250" {
		t.Errorf("%+v", m)
	}
	m = decodeOne(t, d, "6.1.0-56-amd64,12,390,3330845,c;tab\\x09back\\x5cslash\\xe2\\x82\\xac \\xq end")
	if m.Release != "6.1.0-56-amd64" || m.Facility != 1 || m.Level != 4 || !m.Continuation ||
		m.Text != "tab\tback\\slash€ \\xq end" {
		t.Errorf("%+v", m)
	}
	m = decodeOne(t, d, "4,391,3331125,-;bad \\xff utf-8")
	if m.Text != "bad \uFFFD utf-8" || d.Counters().InvalidUTF8 != 1 {
		t.Errorf("%q, counters %+v", m.Text, d.Counters())
	}
	// Not headers: basic lines that begin with a digit.
	for _, p := range []string{"8021q: adding VLAN 0 to HW filter;", "1;2", "4,5;x", "4,x,6,-;text", "4,5,6,-,ncfrag=a/b;x"} {
		if m := decodeOne(t, d, p+"\n"); m.Extended || m.Text != p {
			t.Errorf("%q: %+v, want a basic line", p, m)
		}
	}
}

func TestBasic(t *testing.T) {
	d := NewDecoder(Config{})
	msgs := d.Decode(node, []byte("[    3.053091] first\n[    3.053092][  T114] second\nno time\n[drm] bracket\n\n\x00\x00"), t0)
	want := []struct {
		text   string
		uptime time.Duration
		caller string
	}{
		{"first", 3053091 * time.Microsecond, ""},
		{"second", 3053092 * time.Microsecond, "T114"},
		{"no time", 0, ""},
		{"[drm] bracket", 0, ""},
	}
	if len(msgs) != len(want) {
		t.Fatalf("%d messages: %+v", len(msgs), msgs)
	}
	for i, w := range want {
		m := msgs[i]
		if m.Text != w.text || m.Uptime != w.uptime || m.HasUptime != (w.uptime != 0) || m.Caller != w.caller || m.Level != -1 || m.Extended {
			t.Errorf("message %d: %+v, want %+v", i, m, w)
		}
	}
	for _, p := range []string{"", "\n", "\x00\x00", "\n\n"} {
		if msgs := d.Decode(node, []byte(p), t0); len(msgs) != 0 {
			t.Errorf("%q: %+v", p, msgs)
		}
	}
	if c := d.Counters(); c.Malformed != 4 {
		t.Errorf("counters %+v: want the 4 empty datagrams malformed", c)
	}
}

// TestContinuedLines: a basic line cut by the end of its datagram (a
// line over netconsole's 1000 bytes, or a pr_cont line in pieces) is
// continued by the source's next datagram.
func TestContinuedLines(t *testing.T) {
	d := NewDecoder(Config{FragmentTimeout: time.Second})
	other := netip.MustParseAddrPort("10.99.0.3:6665")
	var got []Message
	got = append(got, d.Decode(node, []byte("[    3.000001] long line, caf\xc3"), t0)...)
	got = append(got, d.Decode(other, []byte("[    3.000002] another source\n"), t0)...)
	got = append(got, d.Decode(node, []byte("\xa9 and the rest\n[    3.000003] next\n"), t0)...)
	// A cut line followed by a new timestamped line: taken as it is.
	got = append(got, d.Decode(node, []byte("[    3.000004] cut"), t0)...)
	got = append(got, d.Decode(node, []byte("[    3.000005] new\n"), t0)...)
	// A cut line nothing continues: given up after FragmentTimeout.
	got = append(got, d.Decode(node, []byte("[    3.000006] last words"), t0)...)
	got = append(got, d.Expire(t0.Add(2*time.Second))...)
	var texts []string
	for _, m := range got {
		texts = append(texts, m.Text)
	}
	want := []string{"another source", "long line, café and the rest", "next", "cut", "new", "last words"}
	if strings.Join(texts, "|") != strings.Join(want, "|") {
		t.Errorf("got %q\nwant %q", texts, want)
	}
	if c := d.Counters(); c.Joined != 1 || c.InvalidUTF8 != 0 || d.pendingBytes != 0 {
		t.Errorf("counters %+v, %d bytes pending", c, d.pendingBytes)
	}
	// Flush takes what still waits.
	d.Decode(node, []byte("[    3.000007] end of input"), t0)
	if m := d.Flush(); len(m) != 1 || m[0].Text != "end of input" {
		t.Errorf("flush: %+v", m)
	}
}

func TestDuplicates(t *testing.T) {
	d := NewDecoder(Config{DedupWindow: 2})
	once := func(p string) int { return len(d.Decode(node, []byte(p), t0)) }
	if once("4,1,100,-;a") != 1 || once("4,1,100,-;a") != 0 {
		t.Error("an extended record twice: want it once")
	}
	if once("[    1.000000] b\n") != 1 || once("[    1.000000] b\n") != 0 {
		t.Error("a timed basic line twice: want it once")
	}
	if first, again := once("no time\n"), once("no time\n"); first != 1 || again != 1 {
		t.Error("an untimed basic line twice: want it twice (a repeat cannot be told from a resend)")
	}
	if len(d.Decode(netip.MustParseAddrPort("10.99.0.3:6665"), []byte("4,1,100,-;a"), t0)) != 1 {
		t.Error("the same record from another source: want it")
	}
	// The window holds 2: the first record is forgotten after two more.
	once("4,2,200,-;c")
	once("4,3,300,-;d")
	if once("4,1,100,-;a") != 1 {
		t.Error("a record older than the window: want it again")
	}
	if c := d.Counters(); c.Duplicates != 2 {
		t.Errorf("counters %+v", c)
	}
}

// fragments splits an extended record's body as netconsole does.
func fragments(header, body string, chunk int) []string {
	var out []string
	for off := 0; off < len(body); off += chunk {
		end := min(off+chunk, len(body))
		out = append(out, fmt.Sprintf("%s,ncfrag=%d/%d;%s", header, off, len(body), body[off:end]))
	}
	return out
}

func TestFragments(t *testing.T) {
	body := "BUG: " + strings.Repeat("x", 2500) + "\n SUBSYSTEM=pci\n"
	frags := fragments("4,77,3042249,-", body, 900)
	if len(frags) != 3 {
		t.Fatalf("%d fragments", len(frags))
	}
	for name, order := range map[string][]int{
		"in order":     {0, 1, 2},
		"out of order": {2, 0, 1},
		"repeated":     {0, 0, 1, 1, 2},
	} {
		t.Run(name, func(t *testing.T) {
			d := NewDecoder(Config{})
			var got []Message
			for _, i := range order {
				got = append(got, d.Decode(node, []byte(frags[i]), t0)...)
			}
			if len(got) != 1 || got[0].Text != strings.TrimSuffix(body[:strings.IndexByte(body, '\n')], "\n") || got[0].Dict["SUBSYSTEM"] != "pci" || got[0].Seq != 77 {
				t.Fatalf("%d messages: %+v", len(got), got)
			}
			if c := d.Counters(); c.Reassembled != 1 || c.Fragments != uint64(len(order)) || d.pendingBytes != 0 || len(d.pending) != 0 {
				t.Errorf("counters %+v, %d bytes pending", c, d.pendingBytes)
			}
		})
	}

	t.Run("refused", func(t *testing.T) {
		d := NewDecoder(Config{MaxRecordBytes: 4096, MaxPendingPerSource: 2, MaxPendingBytes: 8000})
		for _, p := range []string{
			"4,1,1,-,ncfrag=0/100000;x", // total over MaxRecordBytes
			"4,1,1,-,ncfrag=100/100;x",  // offset past the total
			"4,1,1,-,ncfrag=98/100;xyz", // chunk past the total
			"4,1,1,-,ncfrag=0/100;",     // empty chunk
		} {
			if msgs := d.Decode(node, []byte(p), t0); len(msgs) != 0 {
				t.Errorf("%q: %+v", p, msgs)
			}
		}
		d.Decode(node, []byte("4,2,1,-,ncfrag=0/100;x"), t0)
		d.Decode(node, []byte("4,2,1,-,ncfrag=1/200;y"), t0) // a total that disagrees
		d.Decode(node, []byte("4,3,1,-,ncfrag=0/100;x"), t0)
		d.Decode(node, []byte("4,4,1,-,ncfrag=0/100;x"), t0) // a third record from one source
		other := netip.MustParseAddrPort("10.99.0.3:6665")
		d.Decode(other, []byte("4,4,1,-,ncfrag=0/4000;x"), t0)
		d.Decode(netip.MustParseAddrPort("10.99.0.4:6665"), []byte("4,4,1,-,ncfrag=0/4000;x"), t0) // over MaxPendingBytes
		if c, want := d.Counters(), 2*partialCost(100)+partialCost(4000); c.FragmentsRefused != 7 || d.pendingBytes != want {
			t.Errorf("counters %+v, %d bytes pending", c, d.pendingBytes)
		}
	})

	t.Run("expired", func(t *testing.T) {
		d := NewDecoder(Config{FragmentTimeout: time.Second})
		d.Decode(node, []byte(frags[0]), t0)
		d.Decode(node, []byte(frags[1]), t0.Add(500*time.Millisecond))
		if msgs := d.Decode(node, []byte(frags[2]), t0.Add(1500*time.Millisecond)); len(msgs) != 0 {
			t.Errorf("a record completed after its timeout: %+v", msgs)
		}
		if c := d.Counters(); c.FragmentsExpired != 1 || d.pendingBytes != partialCost(len(body)) {
			t.Errorf("counters %+v, %d bytes pending (the last fragment starts a new record)", c, d.pendingBytes)
		}
		d.Expire(t0.Add(time.Hour))
		if d.pendingBytes != 0 || len(d.pending) != 0 || len(d.perSource) != 0 {
			t.Errorf("after expiry: %d bytes, %d records pending", d.pendingBytes, len(d.pending))
		}
	})
}

// FuzzDecode feeds arbitrary datagrams from a few sources: the decoder
// must not panic, must return valid UTF-8, and must stay within its
// bounds.
// FuzzDecode feeds a fresh decoder a sequence of datagrams: the input
// split at 0xfe bytes, each datagram from one of four sources (two bits
// of src each) and received 1 ms to 0.7 s after the one before (so
// fragments and unfinished lines expire). Every message must be valid
// UTF-8 and the memory held within its bound, after every datagram. One
// input is one whole history: a failure replays from its input alone.
func FuzzDecode(f *testing.F) {
	for _, s := range []string{
		"[    3.053091] Kernel panic - not syncing: Fatal exception\n",
		"6,389,3330270,-,caller=T1;sysrq: Trigger a crash\n SUBSYSTEM=x\n",
		"4,77,3042249,-,ncfrag=0/20;0123456789\xfe4,77,3042249,-,ncfrag=10/20;0123456789",
		"4,77,3042249,-,ncfrag=10/20;0123456789",
		"6.1.0-56-amd64,0,390,3330845,-;Kernel panic\\x0a",
		"\\x\\xzz\\xff;[ ][T1]",
		"[    1.000000] a line cut\xfe in two\n\xfe[    1.000001] next\n",
	} {
		f.Add([]byte(s), uint8(0))
	}
	f.Fuzz(func(t *testing.T, input []byte, src uint8) {
		d := NewDecoder(Config{MaxPendingBytes: 64 << 10, MaxRecordBytes: 8192, FragmentTimeout: time.Second})
		now := t0
		for i, payload := range bytes.Split(input, []byte{0xfe}) {
			now = now.Add(time.Millisecond * time.Duration(1+len(payload)%700))
			from := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, (src >> (2 * (i % 4))) & 3}), 6665)
			for _, m := range d.Decode(from, payload, now) {
				if !utf8Valid(m.Text) {
					t.Fatalf("datagram %d: invalid UTF-8 text %q", i, m.Text)
				}
			}
			if d.pendingBytes > 64<<10 || d.pendingBytes < 0 {
				t.Fatalf("datagram %d: %d bytes pending", i, d.pendingBytes)
			}
		}
		for _, m := range d.Flush() {
			if !utf8Valid(m.Text) {
				t.Fatalf("flushed invalid UTF-8 text %q", m.Text)
			}
		}
	})
}

func utf8Valid(s string) bool { return strings.ToValidUTF8(s, "") == s }

// TestBuffersReleased: a completed record leaves reassembly at once, even
// behind an older incomplete record; a record is charged its buffers and
// an overhead, a waiting line its text and an overhead.
func TestBuffersReleased(t *testing.T) {
	d := NewDecoder(Config{})
	d.Decode(node, []byte("4,1,1,-,ncfrag=0/100;stuck"), t0) // never completed
	for seq := 2; seq < 50; seq++ {
		d.Decode(node, []byte(fmt.Sprintf("4,%d,1,-,ncfrag=0/2;ab", seq)), t0)
	}
	if d.order.Len() != 1 || len(d.pending) != 1 {
		t.Fatalf("%d records in the expiry list, %d pending: want only the stuck one", d.order.Len(), len(d.pending))
	}
	d.Decode(netip.MustParseAddrPort("10.99.0.9:6665"), []byte("x"), t0)
	if want := partialCost(100) + tailCost(d.tails[netip.MustParseAddr("10.99.0.9")]); d.pendingBytes != want {
		t.Errorf("%d bytes pending, want %d", d.pendingBytes, want)
	}
}

// TestAllowed: with --allow, a datagram from outside the allowed networks
// is dropped where it enters and counted, whatever it holds; IPv4-mapped
// IPv6 sources are judged as IPv4.
func TestAllowed(t *testing.T) {
	d := NewDecoder(Config{Allowed: []netip.Prefix{netip.MustParsePrefix("10.99.0.0/24")}})
	panicLine := []byte("0,1,100,-;Kernel panic - not syncing: Fatal exception")
	if got := d.Decode(node, panicLine, t0); len(got) != 1 {
		t.Errorf("from an allowed source: %+v", got)
	}
	for _, src := range []string{"10.98.0.2:6665", "[::ffff:192.0.2.1]:6665", "[fd00::1]:6665"} {
		if got := d.Decode(netip.MustParseAddrPort(src), panicLine, t0); len(got) != 0 {
			t.Errorf("from %s, not allowed: %+v", src, got)
		}
	}
	if got := d.Decode(netip.MustParseAddrPort("[::ffff:10.99.0.3]:6665"), panicLine, t0); len(got) != 1 {
		t.Errorf("from an allowed IPv4-mapped source: %+v", got)
	}
	if c := d.Counters(); c.NotAllowed != 3 || c.Messages != 2 {
		t.Errorf("counters %+v", c)
	}
}

// extradata is what a 6.17+ kernel appends to every extended record of a
// target with userdata "node" and sysdata cpu, taskname, release and msgid
// on, byte for byte as drivers/net/netconsole.c writes it: userdata's
// " %s=%s\n" lines, then sysdata's " cpu=%d\n", " taskname=%s\n",
// " release=%s\n" and " msgid=%u\n".
func extradata(msgid uint32) string {
	return " node=worker-7\n cpu=3\n taskname=bash\n release=6.17.0-lastgasp\n msgid=" + fmt.Sprint(msgid) + "\n"
}

// TestExtradata decodes netconsole's userdata and sysdata lines into the
// message's Node, Release and MsgID.
func TestExtradata(t *testing.T) {
	d := NewDecoder(Config{})
	m := decodeOne(t, d, "0,412,3330270,-,caller=C3;Kernel panic - not syncing: sysrq triggered crash\n SUBSYSTEM=platform\n"+extradata(7))
	if m.Text != "Kernel panic - not syncing: sysrq triggered crash" || m.Node != "worker-7" || m.Release != "6.17.0-lastgasp" ||
		!m.HasMsgID || m.MsgID != 7 || m.Dict["SUBSYSTEM"] != "platform" || m.Dict["cpu"] != "3" || m.Dict["taskname"] != "bash" {
		t.Errorf("%+v", m)
	}
	if _, ok := m.Dict["node"]; ok {
		t.Errorf("node left in the dictionary: %v", m.Dict)
	}
	// The release prepend (6.5+) wins over sysdata's, which says the same.
	if m := decodeOne(t, d, "6.17.0-rc1,6,413,3330271,-;x\n"+extradata(8)); m.Release != "6.17.0-rc1" {
		t.Errorf("release %q", m.Release)
	}
	// A record without extradata (the rig's 6.1) has none of it.
	if m := decodeOne(t, NewDecoder(Config{}), "6,1,2,-;x\n"); m.Node != "" || m.Release != "" || m.HasMsgID {
		t.Errorf("%+v", m)
	}

	// A record fragmented (over 1000 bytes with its extradata) carries
	// the extradata once, in its last fragment's part of the body.
	body := "BUG: " + strings.Repeat("y", 1500) + "\n" + extradata(9)
	for _, f := range fragments("4,414,3330272,-", body, 900) {
		for _, m := range d.Decode(node, []byte(f), t0) {
			if m.Node != "worker-7" || m.MsgID != 9 {
				t.Errorf("reassembled: %+v", m)
			}
		}
	}
	if c := d.Counters(); c.Reassembled != 1 {
		t.Fatalf("counters %+v", c)
	}
}
