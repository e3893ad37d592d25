package kernelrig

import (
	"fmt"
	"time"
)

// The settings that turn a report into a panic, and the short watchdog
// timings that make the runs quick.
var (
	panicOnOops = "kernel.panic_on_oops=1"
	noPanicOops = "kernel.panic_on_oops=0"
	softlockup  = []string{"kernel.watchdog_thresh=2"} // reported after 2*2 s
	hungTask    = []string{"kernel.hung_task_timeout_secs=5", "kernel.hung_task_check_interval_secs=1"}
	rcuStall    = []string{"/sys/module/rcupdate/parameters/rcu_cpu_stall_timeout=3"}
)

func with(base []string, more ...string) []string {
	return append(append([]string(nil), base...), more...)
}

// variant is a failure the catalog records in one or more netconsole
// setups.
type variant struct {
	name    string // e.g. "null-panic"
	s       Scenario
	formats []string // of "basic-v4", "ext-v4", "basic-v6", "ext-v6"
}

// both are the two formats over IPv4, for the failures recorded in both.
var both = []string{"basic-v4", "ext-v4"}

// variants is the recorded set, before it is multiplied by formats.
var variants = []variant{
	{"healthy", Scenario{Mode: "none", Noise: 20}, []string{"basic-v4"}},
	{"sysrq", Scenario{Mode: "sysrq"}, []string{"basic-v4", "ext-v4", "ext-v6"}},
	{"panic", Scenario{Mode: "panic"}, both},
	{"null-panic", Scenario{Mode: "null", Sysctls: []string{panicOnOops}}, []string{"basic-v4", "ext-v4", "ext-v6"}},
	{"null-alive", Scenario{Mode: "null", Sysctls: []string{noPanicOops}}, []string{"basic-v4"}},
	{"bug-panic", Scenario{Mode: "bug", Sysctls: []string{panicOnOops}}, both},
	{"bug-alive", Scenario{Mode: "bug", Sysctls: []string{noPanicOops}}, []string{"basic-v4"}},
	{"gpf-panic", Scenario{Mode: "gpf", Sysctls: []string{panicOnOops}}, both},
	{"gpf-alive", Scenario{Mode: "gpf", Sysctls: []string{noPanicOops}}, []string{"basic-v4"}},
	{"warn-alive", Scenario{Mode: "warn"}, both},
	{"warn-panic", Scenario{Mode: "warn", Sysctls: []string{"kernel.panic_on_warn=1"}}, []string{"basic-v4"}},
	{"softlockup-panic", Scenario{Mode: "softlockup", Seconds: 20,
		Sysctls: with(softlockup, "kernel.softlockup_panic=1")}, both},
	{"softlockup-alive", Scenario{Mode: "softlockup", Seconds: 7,
		Sysctls: with(softlockup, "kernel.softlockup_panic=0")}, []string{"basic-v4"}},
	{"hung-panic", Scenario{Mode: "hung", Seconds: 30, Wait: 20 * time.Second,
		Sysctls: with(hungTask, "kernel.hung_task_panic=1")}, []string{"basic-v4", "ext-v4", "basic-v6"}},
	{"hung-alive", Scenario{Mode: "hung", Seconds: 9, Wait: 12 * time.Second,
		Sysctls: with(hungTask, "kernel.hung_task_panic=0")}, []string{"basic-v4"}},
	{"rcustall-panic", Scenario{Mode: "rcustall", Seconds: 20, CPUs: 2,
		Sysctls: with(rcuStall, "kernel.panic_on_rcu_stall=1")}, both},
	// Not detected under TCG: no PMU, so no perf NMI watchdog (see
	// crashmod.c); recorded to show that nothing is reported.
	{"hardlockup-undetected", Scenario{Mode: "hardlockup", Seconds: 5, CPUs: 2,
		Sysctls: []string{"kernel.watchdog_thresh=2", "kernel.nmi_watchdog=1", "kernel.hardlockup_panic=1"}}, []string{"basic-v4"}},
	{"oom-panic", Scenario{Mode: "oom", Sysctls: []string{"vm.panic_on_oom=1"}}, both},
	{"oom-alive", Scenario{Mode: "oom", Sysctls: []string{"vm.panic_on_oom=0"}}, []string{"basic-v4"}},
	{"long", Scenario{Mode: "long"}, []string{"basic-v4", "ext-v4", "ext-v6"}},
}

// Catalog returns the scenarios recorded into testdata/kernel: every
// failure mode, in basic and extended format over IPv4, the ones whose
// node survives in basic format, and a few over IPv6. Names are
// FAILURE-FORMAT-IPVERSION, e.g. null-panic-ext-v4.
func Catalog() []Scenario {
	var out []Scenario
	for _, v := range variants {
		for _, f := range v.formats {
			s := v.s
			s.Name = v.name + "-" + f
			switch f {
			case "basic-v4":
			case "ext-v4":
				s.Extended = true
			case "basic-v6":
				s.IPv6 = true
			case "ext-v6":
				s.Extended, s.IPv6 = true, true
			default:
				panic(fmt.Sprintf("kernelrig: catalog: format %q", f))
			}
			if s.Noise == 0 {
				s.Noise = 5
			}
			if s.Timeout == 0 {
				s.Timeout = 90 * time.Second
			}
			out = append(out, s)
		}
	}
	return out
}
