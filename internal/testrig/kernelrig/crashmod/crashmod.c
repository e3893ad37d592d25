// SPDX-License-Identifier: GPL-2.0
/*
 * crashmod: provoke one kernel failure on demand, for lastgasp's real-kernel
 * test rig (kernelrig). Loading the module with mode=MODE makes the kernel
 * fail the way MODE says; the rig's /init sets the sysctls that decide
 * whether the kernel survives the report or panics, and captures what
 * netconsole sends.
 *
 *	insmod crashmod.ko mode=null [seconds=N]
 *
 * Each mode below is specified by: what it does, what the kernel prints
 * (Debian's 6.1 kernel), and which setting turns the report into a panic.
 * "seconds" bounds the modes that spin or sleep: if nothing has killed the
 * kernel by then, the module gives up and the guest lives on.
 *
 * Built out of tree against Debian's linux-headers (see Makefile); file
 * names in the kernel's reports read kernelrig/crashmod/crashmod.c, whatever
 * directory the module was built in.
 */
#include <linux/delay.h>
#include <linux/jiffies.h>
#include <linux/kernel.h>
#include <linux/kthread.h>
#include <linux/module.h>
#include <linux/notifier.h>
#include <linux/panic_notifier.h>
#include <linux/preempt.h>
#include <linux/rcupdate.h>
#include <linux/sched.h>
#include <linux/string.h>

static char *mode = "";
module_param(mode, charp, 0444);
MODULE_PARM_DESC(mode, "failure to provoke: panic null bug warn gpf softlockup hardlockup hung rcustall long");

static int seconds = 30;
module_param(seconds, int, 0444);
MODULE_PARM_DESC(seconds, "how long the spinning and sleeping modes last before giving up (default 30)");

/*
 * spin busy-waits for the given number of seconds, with preemption (and,
 * if irqs_off, interrupts) disabled by the caller. With interrupts off
 * jiffies stop, so the time is counted in 1 ms delays instead.
 */
static void spin(int secs, bool irqs_off)
{
	unsigned long end = jiffies + secs * HZ;
	long ms;

	if (irqs_off) {
		for (ms = 0; ms < secs * 1000L; ms++)
			mdelay(1);
		return;
	}
	while (time_before(jiffies, end))
		cpu_relax();
}

/* ---- mode=long ---------------------------------------------------------- */

/*
 * Line A is 980 bytes of text: with its basic prefix ("[    3.123456] ", 15
 * bytes) or its extended header ("0,412,3123456,-;", about 16) and the
 * newline it still fits one netconsole datagram (MAX_PRINT_CHUNK, 1000
 * bytes). Line B is asked to be longer than printk keeps: 6.1 formats a
 * message into LOG_LINE_MAX (1024 - 32 = 992) bytes with its NUL and its
 * KERN_EMERG prefix (2 bytes), so 989 bytes of text are kept, which do not
 * fit one datagram. Basic netconsole sends them as two datagrams, the
 * second a bare continuation with no timestamp (here cut inside an "é");
 * extended netconsole sends two fragments, each with the record's header
 * and ",ncfrag=<offset>/<total>". Line B's "é"s (UTF-8 c3 a9) are escaped
 * by the extended format as \xc3\xa9, so its extended body is 1908
 * bytes.
 */
#define LINE_A_LEN 980
#define LINE_B_LEN 1100
static char line_a[LINE_A_LEN + 1];
static char line_b[LINE_B_LEN + 1];

static void fill(char *buf, int len, const char *head, const char *unit)
{
	int n = strscpy(buf, head, len + 1);
	int ulen = strlen(unit);

	while (n + ulen <= len) {
		memcpy(buf + n, unit, ulen);
		n += ulen;
	}
	while (n < len)
		buf[n++] = '.';
	buf[n] = '\0';
}

/*
 * long_notify prints lines A and B from the panic notifier chain, after
 * the "Kernel panic - not syncing" line and its short stack dump, so that
 * they fall inside the context a collector forwards after the panic line.
 */
static int long_notify(struct notifier_block *nb, unsigned long event, void *reason)
{
	pr_emerg("%s\n", line_a);
	pr_emerg("%s\n", line_b);
	return NOTIFY_DONE;
}

static struct notifier_block long_nb = {
	.notifier_call = long_notify,
	.priority = INT_MAX, /* before the x86 "Kernel Offset" notifier */
};

static int long_thread(void *unused)
{
	panic("lastgasp-test: panic after long lines");
	return 0;
}

/* ---- mode=hung ---------------------------------------------------------- */

static int hung_thread(void *unused)
{
	/* msleep sleeps in TASK_UNINTERRUPTIBLE, the D state hung_task watches. */
	msleep(seconds * 1000);
	return 0;
}

/* ---- mode=rcustall ------------------------------------------------------ */

static struct rcu_head rcu_probe;

static void rcu_probe_done(struct rcu_head *head)
{
}

static int __init crashmod_init(void)
{
	pr_info("crashmod: mode=%s seconds=%d\n", mode, seconds);

	if (!strcmp(mode, "panic")) {
		/*
		 * panic: a direct call to panic().
		 * Prints: "Kernel panic - not syncing: lastgasp-test: direct
		 * panic", then the stack of insmod. Always fatal.
		 */
		panic("lastgasp-test: direct panic");
	} else if (!strcmp(mode, "null")) {
		/*
		 * null: reads address 0 (a page fault in kernel mode).
		 * Prints: "BUG: kernel NULL pointer dereference, address:
		 * 0000000000000000", "#PF: ...", "Oops: 0000 [#1] PREEMPT SMP
		 * NOPTI", registers, trace, "---[ end trace ... ]---".
		 * Fatal with kernel.panic_on_oops=1 ("Kernel panic - not
		 * syncing: Fatal exception"); otherwise insmod is killed and
		 * the kernel goes on.
		 */
		int val = *(volatile int *)NULL;

		pr_info("crashmod: read %d at NULL\n", val);
	} else if (!strcmp(mode, "bug")) {
		/*
		 * bug: BUG(), an invalid opcode (ud2) the kernel treats as a
		 * failed assertion.
		 * Prints: "kernel BUG at kernelrig/crashmod/crashmod.c:<line>!",
		 * "invalid opcode: 0000 [#1] PREEMPT SMP NOPTI", registers,
		 * trace. Fatal with kernel.panic_on_oops=1 ("Fatal
		 * exception"); otherwise insmod is killed.
		 */
		BUG();
	} else if (!strcmp(mode, "warn")) {
		/*
		 * warn: WARN() with a message.
		 * Prints: "lastgasp-test: warning", "WARNING: CPU: 0 PID: <pid>
		 * at kernelrig/crashmod/crashmod.c:<line>
		 * crashmod_init+0x.../0x... [crashmod]", registers, trace,
		 * "---[ end trace ... ]---". The kernel goes on, unless
		 * kernel.panic_on_warn=1: "Kernel panic - not syncing:
		 * kernel: panic_on_warn set ...".
		 */
		WARN(1, "lastgasp-test: warning\n");
	} else if (!strcmp(mode, "gpf")) {
		/*
		 * gpf: reads a non-canonical address (bits 63..48 not a copy
		 * of bit 47), which faults with #GP, not #PF.
		 * Prints: "general protection fault, probably for
		 * non-canonical address 0xdead000000000000: 0000 [#1] PREEMPT
		 * SMP NOPTI", registers, trace. Fatal with
		 * kernel.panic_on_oops=1 ("Fatal exception"); otherwise insmod
		 * is killed.
		 */
		unsigned long val = *(volatile unsigned long *)0xdead000000000000UL;

		pr_info("crashmod: read %lu at a non-canonical address\n", val);
	} else if (!strcmp(mode, "softlockup")) {
		/*
		 * softlockup: spins with preemption disabled (interrupts on)
		 * for "seconds", so the per-CPU watchdog thread never runs.
		 * Prints, after 2 * kernel.watchdog_thresh seconds: "watchdog:
		 * BUG: soft lockup - CPU#0 stuck for <n>s! [insmod:<pid>]",
		 * modules, registers, trace. Fatal with
		 * kernel.softlockup_panic=1 ("Kernel panic - not syncing:
		 * softlockup: hung tasks"); otherwise the report repeats while
		 * the spin lasts, then insmod returns.
		 */
		preempt_disable();
		spin(seconds, false);
		preempt_enable();
	} else if (!strcmp(mode, "hardlockup")) {
		/*
		 * hardlockup: spins with interrupts disabled for "seconds".
		 * Only the perf NMI watchdog (an NMI from a PMU counter) can
		 * see it: "NMI watchdog: Watchdog detected hard LOCKUP on cpu
		 * 0", fatal with kernel.hardlockup_panic=1 ("Kernel panic -
		 * not syncing: Hard LOCKUP"). Without a PMU (qemu's TCG has
		 * none: "NMI watchdog: Perf NMI watchdog permanently
		 * disabled") nothing sees it while it lasts; after it, the
		 * soft lockup watchdog may report the time lost.
		 */
		unsigned long flags;

		local_irq_save(flags);
		spin(seconds, true);
		local_irq_restore(flags);
	} else if (!strcmp(mode, "hung")) {
		/*
		 * hung: a kernel thread "lg-hung" sleeps uninterruptibly (D
		 * state) for "seconds"; insmod returns at once.
		 * Prints, once the thread has slept
		 * kernel.hung_task_timeout_secs (checked every
		 * kernel.hung_task_check_interval_secs): "INFO: task
		 * lg-hung:<pid> blocked for more than <n> seconds.", the
		 * "echo 0 > ..." hint, the task's stack. Fatal with
		 * kernel.hung_task_panic=1 ("Kernel panic - not syncing:
		 * hung_task: blocked tasks"); otherwise the thread wakes after
		 * "seconds" and exits.
		 */
		struct task_struct *t = kthread_run(hung_thread, NULL, "lg-hung");

		if (IS_ERR(t))
			return PTR_ERR(t);
	} else if (!strcmp(mode, "rcustall")) {
		/*
		 * rcustall: asks for a grace period (call_rcu) and spins with
		 * preemption disabled for "seconds", so this CPU never passes
		 * through a quiescent state. Needs a second CPU to run the
		 * grace-period kthread (one CPU never starts the grace period
		 * it would stall).
		 * Prints, after rcupdate.rcu_cpu_stall_timeout seconds (writable
		 * in /sys/module/rcupdate/parameters/, at least 3): "rcu:
		 * INFO: rcu_preempt self-detected stall on CPU" (or "...
		 * detected stalls on CPUs/tasks:" from the other CPU), the
		 * stalled CPU's stack. Fatal with kernel.panic_on_rcu_stall=1
		 * ("Kernel panic - not syncing: RCU Stall"); the soft lockup
		 * watchdog would report the same spin later (2 *
		 * kernel.watchdog_thresh).
		 */
		preempt_disable();
		call_rcu(&rcu_probe, rcu_probe_done);
		spin(seconds, false);
		preempt_enable();
		rcu_barrier(); /* rcu_probe must not outlive the module */
	} else if (!strcmp(mode, "long")) {
		/*
		 * long: lines at and past netconsole's 1000-byte datagram
		 * limit, then a panic from a kernel thread "lg-long" (a short
		 * stack dump). Prints: "Kernel panic - not syncing:
		 * lastgasp-test: panic after long lines", the thread's stack,
		 * then from a panic notifier line A ("lastgasp-test: long line
		 * A ...", 980 bytes) and line B ("lastgasp-test: long line B
		 * ...", cut by printk to 989 bytes). Always fatal.
		 */
		struct task_struct *t;

		fill(line_a, LINE_A_LEN, "lastgasp-test: long line A (980 bytes, one datagram in either format): ",
		     "0123456789abcdef");
		fill(line_b, LINE_B_LEN, "lastgasp-test: long line B (cut by printk to 989 bytes, fragmented): ",
		     "caf\xc3\xa9 ");
		atomic_notifier_chain_register(&panic_notifier_list, &long_nb);
		t = kthread_run(long_thread, NULL, "lg-long");
		if (IS_ERR(t)) {
			atomic_notifier_chain_unregister(&panic_notifier_list, &long_nb);
			return PTR_ERR(t);
		}
	} else {
		pr_err("crashmod: unknown mode \"%s\"\n", mode);
		return -EINVAL;
	}
	return 0;
}

static void __exit crashmod_exit(void)
{
	/* Harmless (-ENOENT) when mode=long did not register it. */
	atomic_notifier_chain_unregister(&panic_notifier_list, &long_nb);
}

module_init(crashmod_init);
module_exit(crashmod_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("lastgasp test rig: provoke a kernel failure on load");
