// Command lastgasp turns a Linux kernel's dying words, sent by netconsole,
// into a clean, explained end for the Kubernetes node and pods it took down.
//
//	lastgasp run [flags]         the collector: data path, detection, cleanup
//	lastgasp tail [--lines]      watch a running collector's incidents
//	lastgasp scan FILE.pcap...   run captures through the XDP program
//	lastgasp history [ID]        the kernel crashes recorded in the cluster
//	lastgasp netconsole-setup    point this machine's netconsole at the collectors
//	lastgasp agent               the same on every node, kept up to date (a DaemonSet)
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// Exit codes.
const (
	exitOK    = 0
	exitError = 1 // the work failed
	exitUsage = 2 // the command line was wrong
)

const usage = `usage: lastgasp COMMAND [flags] [args]

commands:
  run            the collector: netconsole lines in (XDP or a socket),
                 incidents out, dead nodes and their pods cleaned up
  tail           print a running collector's incidents (--lines: and its
                 forwarded lines) as they come
  scan FILE...   run pcap/pcapng captures through the XDP program and print
                 the incidents (or lines) found, one JSON object a line
  history [ID]   the kernel crashes recorded in the cluster, one line a
                 crash (--node, --pod NS/NAME, --since 7d, --json); with
                 an incident ID, its whole record and kernel lines
  netconsole-setup --collector ADDR[,ADDR...]
                 point this machine's netconsole at the collectors, once
  agent          on every node: netconsole kept pointed at two collectors of
                 the collector Service, the Node annotated with its source

Run "lastgasp COMMAND -h" for a command's flags.
`

// run dispatches to a command and returns the process exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	switch args[0] {
	case "run":
		return runCmd(ctx, args[1:], stdout, stderr)
	case "scan":
		return scan(ctx, args[1:], stdout, stderr)
	case "tail":
		return tailCmd(ctx, args[1:], stdout, stderr)
	case "history":
		return historyCmd(ctx, args[1:], stdout, stderr)
	case "netconsole-setup":
		return netconsoleSetupCmd(ctx, args[1:], stdout, stderr)
	case "agent":
		return agentCmd(ctx, args[1:], stdout, stderr)
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, usage)
		return exitOK
	}
	fmt.Fprintf(stderr, "lastgasp: unknown command %q\n\n%s", args[0], usage)
	return exitUsage
}
