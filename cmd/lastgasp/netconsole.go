package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strings"

	"github.com/lastgasp/lastgasp/internal/netconsolesetup"
)

// netconsoleSetupCmd runs "lastgasp netconsole-setup": it points this
// machine's netconsole at the collectors once and exits, 0 when every
// collector has its target, else 1 with one line saying why.
func netconsoleSetupCmd(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("netconsole-setup", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	collectors := fs.String("collector", "", "the collectors' addresses, IPv4 or IPv6, comma-separated (required)")
	port := fs.Int("port", netconsolesetup.DefaultPort, "the collectors' netconsole UDP port")
	host, _ := os.Hostname()
	nodeName := fs.String("node-name", host, "the Node name sent in netconsole's userdata (kernel 6.9+)")
	dir := fs.String("configfs", netconsolesetup.DefaultDir, "netconsole's configfs directory")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprintf(stderr, "usage: lastgasp netconsole-setup --collector ADDR[,ADDR...] [flags]\n\n"+
				"Points this machine's netconsole at the collectors (one configfs target each,\n"+
				"extended format, next hop's MAC resolved now), removes the targets of\n"+
				"collectors no longer named, and exits. Rerunning it changes nothing.\n\nflags:\n")
			fs.SetOutput(stderr)
			fs.PrintDefaults()
			return exitOK
		}
		fmt.Fprintf(stderr, "lastgasp netconsole-setup: %v\n", err)
		return exitUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "lastgasp netconsole-setup: unexpected argument %q\n", fs.Arg(0))
		return exitUsage
	}
	addrs, err := parseCollectors(*collectors)
	if err != nil {
		fmt.Fprintf(stderr, "lastgasp netconsole-setup: %v\n", err)
		return exitUsage
	}
	if *port <= 0 || *port > 65535 {
		fmt.Fprintf(stderr, "lastgasp netconsole-setup: --port %d: not a port\n", *port)
		return exitUsage
	}
	res, err := netconsolesetup.Configure(ctx, netconsolesetup.Options{
		Collectors: addrs, Port: *port, NodeName: *nodeName, Dir: *dir,
	})
	for _, c := range res.Changes {
		fmt.Fprintf(stdout, "%s %s\n", c.Name, c.Action)
	}
	if err != nil {
		fmt.Fprintf(stderr, "lastgasp netconsole-setup: %s\n", errorLine(err))
		return exitError
	}
	return exitOK
}

// parseCollectors parses a comma-separated list of addresses.
func parseCollectors(s string) ([]netip.Addr, error) {
	if strings.TrimSpace(s) == "" {
		return nil, errors.New("--collector: no collector named")
	}
	var out []netip.Addr
	for _, f := range strings.Split(s, ",") {
		a, err := netip.ParseAddr(strings.TrimSpace(f))
		if err != nil {
			return nil, fmt.Errorf("--collector: %q: not an IP address", f)
		}
		out = append(out, a.Unmap())
	}
	return out, nil
}

// errorLine writes an error (errors.Join's among them) on one line.
func errorLine(err error) string {
	return strings.ReplaceAll(err.Error(), "\n", "; ")
}
