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
	// Dict holds the extended record's dictionary (SUBSYSTEM, DEVICE...).
	Dict map[string]string
}
