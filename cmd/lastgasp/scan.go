package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/lastgasp/lastgasp/internal/detect"
	"github.com/lastgasp/lastgasp/internal/feed"
	"github.com/lastgasp/lastgasp/internal/filter"
	"github.com/lastgasp/lastgasp/internal/netconsole"
	"github.com/lastgasp/lastgasp/internal/pattern"
	"github.com/lastgasp/lastgasp/internal/pcapscan"
	"github.com/lastgasp/lastgasp/loader"
)

// scan runs "lastgasp scan": every packet of every file through the real
// XDP program (BPF_PROG_TEST_RUN), the forwarded lines decoded and
// assembled into incidents, each incident printed as JSON (or, with
// --lines, each forwarded line). Files are scanned in order with one
// program and one detector, as if they were one stream, so a burst opened
// at the end of one file runs on into the next, as it would on the wire.
func scan(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("scan", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: lastgasp scan [flags] FILE.pcap...\n\nRuns each packet through the XDP program, assembles the lines it\nforwards into incidents, and prints each incident (or with --lines,\neach line) as one JSON object a line.\n\nflags:\n")
		fs.PrintDefaults()
	}
	ports := portList{ports: []uint16{loader.DefaultPort}}
	fs.Var(&ports, "port", "netconsole UDP port(s), comma-separated or repeated")
	printLines := fs.Bool("lines", false, "print the forwarded lines instead of incidents")
	stats := fs.Bool("stats", false, "print the XDP program's counters to stderr at the end, as JSON")
	contextLines := fs.Int("context-lines", loader.DefaultContextLines, "lines of a source still forwarded after the end marker (\"---[ end\") of a report that matched; a burst forwards at most 256 lines after a match (0: no bursts)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	if fs.NArg() == 0 {
		fmt.Fprintln(stderr, "lastgasp scan: no capture file given")
		fs.Usage()
		return exitUsage
	}
	if *contextLines < 0 {
		fmt.Fprintf(stderr, "lastgasp scan: --context-lines %d: must be 0 or more\n", *contextLines)
		return exitUsage
	}

	table := pattern.Default()
	sc, err := pcapscan.New(loader.Config{
		Ports:        ports.ports,
		Patterns:     table,
		ContextLines: uint32(*contextLines),
		NoContext:    *contextLines == 0,
		RingBufSize:  1 << 20,
	})
	if err != nil {
		fmt.Fprintf(stderr, "lastgasp scan: %v\n", err)
		return exitError
	}
	defer sc.Close()

	out := bufio.NewWriter(stdout)
	defer out.Flush()
	enc := json.NewEncoder(out)
	enc.SetEscapeHTML(false)
	asm := detect.NewAssembler(netconsole.Config{}, detect.Config{Patterns: table})
	emit := func(l filter.Line) {
		if *printLines {
			enc.Encode(feed.NewLine(l, table))
			return
		}
		for _, inc := range asm.Line(l) {
			enc.Encode(inc)
		}
	}
	code := exitOK
	for _, path := range fs.Args() {
		if ctx.Err() != nil {
			return exitError
		}
		if _, err := sc.File(path, emit); err != nil {
			code = exitError
			fmt.Fprintf(stderr, "lastgasp scan: %v\n", err)
		}
	}
	if !*printLines {
		for _, inc := range asm.Flush() {
			enc.Encode(inc)
		}
	}
	if *stats {
		counters, err := sc.Program().Counters()
		if err != nil {
			fmt.Fprintf(stderr, "lastgasp scan: %v\n", err)
			return exitError
		}
		m := map[string]uint64{}
		for _, c := range loader.CounterValues(counters) {
			m[c.Name] = c.Value
		}
		json.NewEncoder(stderr).Encode(m)
	}
	return code
}

// portList is a flag holding UDP ports, given comma-separated or repeated.
// The first value given replaces the default.
type portList struct {
	ports []uint16
	set   bool // a value was given on the command line
}

func (p *portList) String() string {
	s := make([]string, len(p.ports))
	for i, port := range p.ports {
		s[i] = strconv.Itoa(int(port))
	}
	return strings.Join(s, ",")
}

func (p *portList) Set(v string) error {
	if !p.set {
		p.ports, p.set = nil, true
	}
	for _, f := range strings.Split(v, ",") {
		n, err := strconv.ParseUint(strings.TrimSpace(f), 10, 16)
		if err != nil || n == 0 {
			return fmt.Errorf("%q is not a UDP port (1-65535)", f)
		}
		p.ports = append(p.ports, uint16(n))
	}
	return nil
}
