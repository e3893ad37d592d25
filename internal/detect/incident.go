// Package detect assembles kernel messages into incidents: which node
// failed, how, whether its kernel died, and the kernel's own words.
//
// An incident opens at a source's first trigger line (a line that starts
// with a pattern of the table, confirmed where a prefix is not enough) and
// gathers the source's following lines. It closes when the kernel is
// clearly dead and has had a moment to say its last (SettleTime after the
// "Kernel panic - not syncing" line, or at once on "---[ end Kernel
// panic"), or when the source has been quiet for QuietPeriod; a line
// QuietPeriod after the incident's latest by the kernel's clock starts the
// next one, on every collector alike.
//
// The detector speaks its own small types, not Kubernetes objects: the
// cleanup controller translates.
package detect

import (
	"net/netip"
	"time"

	"github.com/lastgasp/lastgasp/internal/pattern"
)

// Incident is one failure of one node's kernel.
type Incident struct {
	// ID identifies the incident whoever assembled it: a hash of the
	// source and its first trigger (the end marker only if there is no
	// other) with its kernel time, which tells the boot, so that two
	// collectors, or one restarted, name the same incident the same
	// whatever lines each lost after it and whatever their clocks.
	ID string `json:"id"`
	// Source is the address the node's netconsole sent from.
	Source netip.Addr `json:"source"`
	// NodeName is the Node name the kernel's messages carried (netconsole
	// userdata "node", kernel 6.9+): a claim, which the cleanup
	// controller takes only when Source is that Node's address too.
	NodeName string `json:"node_name,omitempty"`
	// Release is the kernel release its messages carried (netconsole's
	// release prepend or sysdata), if any did.
	Release string `json:"release,omitempty"`
	// Kind is the kind of failure: the panic's stated reason where it
	// names one (an OOM or hung-task panic), else the first trigger's.
	Kind pattern.Kind `json:"kind"`
	// Fatal is set when the kernel said it is panicking: the node is
	// dead. A report without a panic (an Oops with panic_on_oops=0, a
	// WARN, a lockup report) is not fatal.
	Fatal bool `json:"fatal"`
	// Reason is the headline: the panic line for a fatal incident, the
	// cause otherwise.
	Reason string `json:"reason"`
	// Cause is the first trigger line: what started it.
	Cause string `json:"cause"`
	// Module is the kernel module the kernel blamed, if it named one.
	Module string `json:"module,omitempty"`
	// Task and PID name the task the kernel blamed, if it named one.
	Task string `json:"task,omitempty"`
	PID  int    `json:"pid,omitempty"`
	// PanicAt is when the panic line (or, without one, the end marker)
	// was received; zero for a non-fatal incident. The node must show no
	// sign of life after it.
	PanicAt time.Time `json:"panic_at,omitzero"`
	// First and Last are when the first and last lines were received.
	First time.Time `json:"first"`
	Last  time.Time `json:"last"`
	// Lines are the incident's lines in kernel order, each with its
	// printk time where known, at most Config.MaxLines of them.
	Lines []string `json:"lines"`
	// LinesDropped counts lines past MaxLines.
	LinesDropped int `json:"lines_dropped,omitempty"`
	// LinesLost counts lines the sender numbered (netconsole sysdata
	// msgid, kernel 6.17+) between its first and last that never
	// arrived: what the network lost of the report.
	LinesLost int `json:"lines_lost,omitempty"`
}
