package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/lastgasp/lastgasp/internal/feed"
)

// tailCmd runs "lastgasp tail": it prints a running collector's
// incidents (and with --lines its forwarded lines) as they come, from
// the collector's /feed.
func tailCmd(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("tail", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	addr := fs.String("addr", "127.0.0.1:9467", "the collector's --feed-addr")
	lines := fs.Bool("lines", false, "print the forwarded lines too")
	asJSON := fs.Bool("json", false, "print the feed's records as they come, one JSON object a line")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprintf(stderr, "usage: lastgasp tail [flags]\n\nPrints a running collector's incidents as they come.\n\nflags:\n")
			fs.SetOutput(stderr)
			fs.PrintDefaults()
			return exitOK
		}
		fmt.Fprintf(stderr, "lastgasp tail: %v\n", err)
		return exitUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "lastgasp tail: unexpected argument %q\n", fs.Arg(0))
		return exitUsage
	}
	url := "http://" + *addr + "/feed"
	if *lines {
		url += "?lines=1"
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		fmt.Fprintf(stderr, "lastgasp tail: %v\n", err)
		return exitUsage
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		fmt.Fprintf(stderr, "lastgasp tail: %v (is lastgasp run serving --feed-addr %s?)\n", err, *addr)
		return exitError
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintf(stderr, "lastgasp tail: %s: %s\n", url, resp.Status)
		return exitError
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 16<<20) // an incident holds up to a few hundred lines
	for sc.Scan() {
		if *asJSON {
			fmt.Fprintf(stdout, "%s\n", sc.Bytes())
			continue
		}
		var r feed.Record
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			fmt.Fprintf(stderr, "lastgasp tail: a record that does not decode: %v\n", err)
			continue
		}
		printRecord(stdout, r)
	}
	if ctx.Err() != nil {
		return exitOK // interrupted: the normal end
	}
	fmt.Fprintf(stderr, "lastgasp tail: the collector closed the feed: %v\n", sc.Err())
	return exitError
}

// printRecord prints a record for a person.
func printRecord(w io.Writer, r feed.Record) {
	switch {
	case r.Incident != nil:
		inc := r.Incident
		fatal := "not fatal"
		if inc.Fatal {
			fatal = "FATAL"
		}
		fmt.Fprintf(w, "%s  incident %s  %s %s from %s: %s\n", inc.First.UTC().Format(time.RFC3339), inc.ID, inc.Kind, fatal, inc.Source, inc.Reason)
		if inc.Cause != inc.Reason {
			fmt.Fprintf(w, "      cause: %s\n", inc.Cause)
		}
		if blamed := strings.TrimSpace(inc.Task + " " + inc.Module); blamed != "" {
			fmt.Fprintf(w, "      blamed: %s\n", blamed)
		}
	case r.Finished != nil:
		fmt.Fprintf(w, "%s  incident %s  from %s: %s\n", time.Now().UTC().Format(time.RFC3339), r.Finished.ID, r.Finished.Source, r.Finished.Outcome)
	case r.Line != nil:
		l := r.Line
		fmt.Fprintf(w, "%s  %-7s %s  %s\n", l.Time.Format("15:04:05.000"), l.Flag, l.Source, strings.TrimSpace(l.Text))
	case r.Dropped > 0:
		fmt.Fprintf(w, "(%d records dropped: this terminal was too slow)\n", r.Dropped)
	}
}
