// Package netconsole decodes netconsole datagrams into kernel log
// messages.
//
// netconsole sends each console write as one UDP datagram in one of two
// formats:
//
//   - basic: the console text, "[    3.053091] Kernel panic - ...\n", with
//     the printk time when printk.time is on; one datagram may hold several
//     lines;
//   - extended ("+" in the netconsole target): one /dev/kmsg-style record,
//     "<prefix>,<seq>,<usec>,<flags>[,caller=..][,ncfrag=<off>/<total>];"
//     then the text with non-printable bytes escaped as \xNN, a newline,
//     and dictionary lines " KEY=value". A kernel with the "release" option
//     prefixes "<release>,". Records longer than netconsole's 1000-byte
//     datagram are split into fragments, each carrying ncfrag.
//
// Kernels 6.9 and later append the target's userdata to an extended
// record as more dictionary lines, " key=value\n" each (lastgasp
// netconsole-setup writes "node", the Node name); later kernels append
// sysdata the same way: " cpu=N", " taskname=comm", " release=R" and
// " msgid=N", the target's message counter (1 for its first message,
// wrapping at 2^32). The decoder takes "node", "release" and "msgid" out
// of the dictionary into the Message's fields. A collector hears only the
// lines its filter keeps (the reports' bursts), so a gap in msgid means
// a line lost only within a report: package detect counts them there.
//
// A Decoder keeps per-source state (fragments being reassembled, sequence
// numbers seen) with bounded memory, and counts everything it refuses.
package netconsole

import (
	"net/netip"
	"time"
)

// Message is one kernel log message.
type Message struct {
	// Source is the sender; IPv4 addresses are plain.
	Source netip.AddrPort
	// Received is when the collector received it (the last fragment's
	// time for a reassembled record).
	Received time.Time
	// Extended is set for a message in the extended format.
	Extended bool
	// Level is the syslog level (0 emergency .. 7 debug), or -1 where
	// the format does not say (basic).
	Level int
	// Facility is the syslog facility (0 kernel), or -1 (basic).
	Facility int
	// Seq is the kernel's record sequence number (extended only).
	Seq uint64
	// HasSeq is set when Seq is known.
	HasSeq bool
	// Uptime is the kernel's timestamp: time since boot.
	Uptime time.Duration
	// HasUptime is set when Uptime is known (always for extended; for
	// basic, when printk.time is on).
	HasUptime bool
	// Continuation is set for an extended record flagged 'c': the
	// continuation of an earlier line.
	Continuation bool
	// Caller is the printk caller id ("T114": task 114, "C0": CPU 0),
	// when the kernel has CONFIG_PRINTK_CALLER.
	Caller string
	// Release is the kernel release, when the netconsole target has the
	// "release" option (extended only).
	Release string
	// Text is the message text, unescaped, as valid UTF-8 (invalid bytes
	// become U+FFFD), without the trailing newline.
	Text string
	// Node is the Node name the sender's netconsole target carries in
	// its userdata ("node", kernel 6.9+), as the datagram says it: a
	// claim, true only if the source address is that Node's.
	Node string
	// MsgID is the sender's netconsole target's message counter (sysdata
	// "msgid"); HasMsgID is set when the record carried one.
	MsgID    uint32
	HasMsgID bool
	// Dict holds the extended record's dictionary (SUBSYSTEM, DEVICE...)
	// and the userdata and sysdata entries other than node, release and
	// msgid (cpu, taskname).
	Dict map[string]string
}

// Keys of netconsole's userdata and sysdata lines the decoder takes out of
// the dictionary.
const (
	// UserdataNode is the userdata key lastgasp netconsole-setup sets
	// to the Node name.
	UserdataNode = "node"
	// SysdataRelease and SysdataMsgID are sysdata's kernel release and
	// message counter.
	SysdataRelease = "release"
	SysdataMsgID   = "msgid"
)
