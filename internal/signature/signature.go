// Package signature names a kernel crash by what stays the same wherever
// and whenever the same bug strikes: a signature that is equal for the
// same bug on every node and every boot, and different for different
// bugs, as kernel crash de-duplicators (syzbot, ABRT) compute them.
//
// A signature is made of three parts:
//
//   - the incident's kind;
//   - its cause line with what varies from one occurrence to the next
//     taken out: the printk time, addresses and other numbers, the names
//     of the tasks that happened to be running;
//   - the first few function names of its first stack: the faulting
//     function (a kernel-mode "RIP:" or "pc :" line) and the call trace
//     after it, without offsets, modules or raw addresses, without the
//     unreliable entries the kernel marks "?", and without the frames
//     that every report shares (dump_stack, panic, the exception
//     entries): what is left is where the bug is.
//
// The signature is a short hash of those parts; Title is the same parts
// in words, for a person.
package signature

import (
	"crypto/sha256"
	"encoding/hex"
	"regexp"
	"strings"

	"github.com/lastgasp/lastgasp/internal/detect"
)

// Frames is how many function names of the stack a signature takes.
const Frames = 4

// Signature is a crash's name across nodes and boots.
type Signature struct {
	// ID is a hash of Kind, Cause and Frames: 16 hex digits.
	ID string `json:"id"`
	// Cause is the cause line with times, numbers and task names taken
	// out ("<n>", "<task>").
	Cause string `json:"cause"`
	// Frames are the first function names of the stack, innermost first.
	Frames []string `json:"frames,omitempty"`
	// Title is the signature in words: the cause and, if known, the
	// first frame ("BUG: kernel NULL pointer dereference, address: <n>
	// in crashmod_init").
	Title string `json:"title"`
}

// Of computes the signature of an incident.
func Of(inc detect.Incident) Signature {
	cause := NormalizeCause(inc.Cause)
	frames := StackFrames(inc.Lines, Frames)
	h := sha256.New()
	h.Write([]byte(string(inc.Kind) + "\x00" + cause))
	for _, f := range frames {
		h.Write([]byte("\x00" + f))
	}
	title := cause
	if len(frames) > 0 {
		title += " in " + frames[0]
	}
	return Signature{ID: hex.EncodeToString(h.Sum(nil))[:16], Cause: cause, Frames: frames, Title: title}
}

var (
	// printkTime is the basic format's "[ seconds.micros] " prefix.
	printkTime = regexp.MustCompile(`^\s*\[\s*\d+\.\d+\]\s*`)
	// Task names, where the kernel names one: "[insmod:104]" (soft
	// lockup), "task insmod:104 " (hung task), "Comm: insmod", "process
	// 104 (memhog)", "Killed process 104 (memhog)".
	taskBracket = regexp.MustCompile(`\[[^\]\s]+:\d+\]`)
	taskColon   = regexp.MustCompile(`\btask [^\s:]+:\d+`)
	taskComm    = regexp.MustCompile(`\bComm: \S+`)
	taskParen   = regexp.MustCompile(`\bprocess \d+ \([^)]*\)`)
	// Numbers: a hexadecimal word with a digit in it, 0x or not
	// (addresses, error codes: a word of letters alone, "dead", stays a
	// word), then decimals not inside a name (CPUs, PIDs, "22s": "ext4"
	// stays).
	hexNumber = regexp.MustCompile(`\b(0x)?[0-9a-fA-F]*[0-9][0-9a-fA-F]*\b`)
	decimal   = regexp.MustCompile(`(^|[^A-Za-z_0-9<])[0-9]+`)
	spaces    = regexp.MustCompile(`\s+`)
)

// NormalizeCause takes out of a cause line what differs between two
// occurrences of the same bug: the printk time, task names and numbers.
func NormalizeCause(line string) string {
	s := printkTime.ReplaceAllString(line, "")
	s = taskBracket.ReplaceAllString(s, "[<task>]")
	s = taskColon.ReplaceAllString(s, "task <task>")
	s = taskComm.ReplaceAllString(s, "Comm: <task>")
	s = taskParen.ReplaceAllString(s, "process <task>")
	s = hexNumber.ReplaceAllString(s, "<n>")
	s = decimal.ReplaceAllString(s, "${1}<n>")
	return strings.TrimSpace(spaces.ReplaceAllString(s, " "))
}

var (
	// faultSite is a kernel-mode instruction pointer: x86's "RIP:
	// 0010:func+0x58/0x1000 [mod]" (0010, the kernel code segment, not
	// 0033, user space) and arm64's "pc : func+0x58/0x1000 [mod]".
	faultSite = regexp.MustCompile(`^(?:RIP: 0010:|pc : )(\S+)`)
	// frame is a call trace entry: " func+0x59/0x220 [mod]", or one the
	// kernel is not sure of, " ? func+0x1/0x2".
	frame = regexp.MustCompile(`^\s*(\?\s*)?([A-Za-z_.$][\w.$]*)\+0x[0-9a-f]+/0x[0-9a-f]+`)
)

// generic are the frames every report of a kind shares: the printing of
// the report, panic itself, the exception and interrupt entries. They say
// how the kernel reported, not where the bug is.
var generic = map[string]bool{
	"dump_stack": true, "dump_stack_lvl": true, "show_stack": true, "show_trace_log_lvl": true,
	"panic": true, "vpanic": true, "nmi_panic": true, "oops_end": true, "die": true, "__die": true, "__die_body": true,
	"__warn": true, "warn_slowpath_fmt": true, "report_bug": true, "handle_bug": true,
	"exc_invalid_op": true, "asm_exc_invalid_op": true, "exc_general_protection": true, "asm_exc_general_protection": true,
	"exc_page_fault": true, "asm_exc_page_fault": true, "page_fault_oops": true, "kernelmode_fixup_or_oops": true,
	"__bad_area_nosemaphore": true, "bad_area_nosemaphore": true, "do_user_addr_fault": true, "no_context": true,
	"do_error_trap": true, "do_trap": true, "die_addr": true,
	"watchdog_timer_fn": true, "__hrtimer_run_queues": true, "hrtimer_interrupt": true,
	"__sysvec_apic_timer_interrupt": true, "sysvec_apic_timer_interrupt": true, "asm_sysvec_apic_timer_interrupt": true,
	"watchdog_overflow_callback": true, "__perf_event_overflow": true, "handle_pmi_common": true, "intel_pmu_handle_irq": true,
	"perf_event_nmi_handler": true, "nmi_handle": true, "default_do_nmi": true, "exc_nmi": true, "end_repeat_nmi": true,
	"_printk": true, "printk": true, "vprintk": true, "vprintk_emit": true,
	"dump_header": true, "oom_kill_process": true, "out_of_memory": true, "check_panic_on_oom": true,
}

// StackFrames returns up to n function names from the first stack in
// lines: the kernel-mode fault site if one comes first, then the call
// trace's reliable entries, generic ones left out, each name once and
// without the compiler's clone suffixes. The
// first trace ends at its end marker ("</TASK>", "---[ end trace") or at
// a user-mode register dump.
func StackFrames(lines []string, n int) []string {
	var out []string
	add := func(name string) {
		// The compiler's clone suffixes (".cold", ".constprop.0",
		// ".isra.0", ".part.0") change with the build, not the bug.
		name, _, _ = strings.Cut(name, ".")
		if generic[name] || len(out) == n {
			return
		}
		for _, seen := range out {
			if seen == name {
				return
			}
		}
		out = append(out, name)
	}
	inTrace := false
	for _, l := range lines {
		text := printkTime.ReplaceAllString(stripExtended(l), "")
		if m := faultSite.FindStringSubmatch(text); m != nil && !inTrace {
			if f := frame.FindStringSubmatch(" " + m[1]); f != nil {
				add(f[2])
			}
			continue
		}
		trimmed := strings.TrimSpace(text)
		switch {
		case strings.HasPrefix(trimmed, "Call Trace:"):
			inTrace = true
			continue
		case !inTrace:
			continue
		case trimmed == "</TASK>" || trimmed == "</IRQ>" && len(out) > 0 ||
			strings.HasPrefix(trimmed, "---[ end trace") || strings.HasPrefix(trimmed, "RIP: 0033:"):
			return out
		}
		if f := frame.FindStringSubmatch(text); f != nil && f[1] == "" {
			add(f[2])
		}
		if len(out) == n {
			return out
		}
	}
	return out
}

// stripExtended takes the extended format's header ("6,358,3763251,-;")
// off a line, if it has one.
func stripExtended(l string) string {
	if i := strings.IndexByte(l, ';'); i > 0 && i < 40 && strings.Count(l[:i], ",") >= 2 && !strings.ContainsAny(l[:i], " []") {
		return l[i+1:]
	}
	return l
}
