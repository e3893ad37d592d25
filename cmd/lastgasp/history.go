package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/lastgasp/lastgasp/internal/cleanup"
	"github.com/lastgasp/lastgasp/internal/crashrecord"
)

// historyConfig is the flags of "lastgasp history".
type historyConfig struct {
	kubeconfig string
	node       string
	pod        string // NS/NAME
	since      time.Duration
	json       bool
	id         string // one record's whole story
}

const historyUsage = `usage: lastgasp history [flags] [ID]

The kernel crashes lastgasp recorded (KernelCrash objects), one line a
crash, oldest first; with an incident ID, that crash's whole record and
the kernel's lines.

flags:
`

// parseHistory parses and checks the flags of "lastgasp history".
func parseHistory(args []string, stderr io.Writer) (historyConfig, error) {
	fs := flag.NewFlagSet("history", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var c historyConfig
	fs.StringVar(&c.kubeconfig, "kubeconfig", "", "kubeconfig file (default: $KUBECONFIG, ~/.kube/config, or in-cluster)")
	fs.StringVar(&c.node, "node", "", "only the crashes of this node")
	fs.StringVar(&c.pod, "pod", "", "only the crashes that ended this pod (NAMESPACE/NAME)")
	since := fs.String("since", "", "only the crashes of this last while (7d, 12h, 30m; default: all)")
	fs.BoolVar(&c.json, "json", false, "one JSON object a crash (with an ID: the whole record)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stderr, historyUsage)
			fs.SetOutput(stderr)
			fs.PrintDefaults()
		}
		return c, err
	}
	switch fs.NArg() {
	case 0:
	case 1:
		c.id = fs.Arg(0)
	default:
		return c, fmt.Errorf("unexpected argument %q", fs.Arg(1))
	}
	if *since != "" {
		d, err := parseSince(*since)
		if err != nil {
			return c, err
		}
		c.since = d
	}
	if c.pod != "" {
		if ns, name, ok := strings.Cut(c.pod, "/"); !ok || ns == "" || name == "" {
			return c, fmt.Errorf("--pod %q: want NAMESPACE/NAME", c.pod)
		}
	}
	return c, nil
}

// parseSince reads a duration, with days ("7d") besides Go's units.
func parseSince(s string) (time.Duration, error) {
	if days, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.Atoi(days)
		if err != nil || n <= 0 {
			return 0, fmt.Errorf("--since %q: want a positive number of days, or a duration", s)
		}
		return time.Duration(n) * 24 * time.Hour, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("--since %q: want a positive duration (7d, 12h, 30m)", s)
	}
	return d, nil
}

// historyCmd runs "lastgasp history".
func historyCmd(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	c, err := parseHistory(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	if err != nil {
		fmt.Fprintf(stderr, "lastgasp history: %v\n", err)
		return exitUsage
	}
	if err := history(ctx, c, stdout); err != nil {
		fmt.Fprintf(stderr, "lastgasp history: %v\n", err)
		return exitError
	}
	return exitOK
}

// history reads the records and prints them.
func history(ctx context.Context, c historyConfig, out io.Writer) error {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = c.kubeconfig
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{}).ClientConfig()
	if err != nil {
		return fmt.Errorf("kubeconfig: %w", err)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("client: %w", err)
	}
	store := crashrecord.NewStore(dyn)
	if c.id != "" {
		kc, err := store.Get(ctx, c.id)
		if err != nil {
			return err
		}
		if c.json {
			enc := json.NewEncoder(out)
			enc.SetIndent("", "  ")
			return enc.Encode(kc)
		}
		printCrash(out, kc)
		return nil
	}
	selector := ""
	if c.node != "" && len(c.node) <= 63 {
		selector = crashrecord.LabelNode + "=" + c.node
	}
	all, err := store.List(ctx, selector)
	if err != nil {
		return err
	}
	now := time.Now()
	var shown []crashrecord.KernelCrash
	for _, kc := range all {
		if c.selects(kc, now) {
			shown = append(shown, kc)
		}
	}
	if c.json {
		enc := json.NewEncoder(out)
		for _, kc := range shown {
			if err := enc.Encode(kc); err != nil {
				return err
			}
		}
		return nil
	}
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "TIME\tINCIDENT\tNODE\tKIND\tOUTCOME\tPODS\tSIGNATURE\tCRASH")
	for _, kc := range shown {
		s := kc.Spec
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", s.FirstTime.UTC().Format(time.RFC3339), kc.Name, s.Node.Name, s.Kind,
			s.Outcome, s.PodCount, s.Signature.ID, oneLine(s.Signature.Title))
	}
	return w.Flush()
}

// selects reports whether a record passes the filters.
func (c historyConfig) selects(kc crashrecord.KernelCrash, now time.Time) bool {
	s := kc.Spec
	if c.node != "" && s.Node.Name != c.node {
		return false
	}
	if c.since > 0 && now.Sub(s.LastTime.Time) > c.since {
		return false
	}
	if c.pod != "" {
		ns, name, _ := strings.Cut(c.pod, "/")
		return slices.ContainsFunc(s.Pods, func(p cleanup.EndedPod) bool { return p.Namespace == ns && p.Name == name })
	}
	return true
}

// printCrash prints one record whole: what happened, what was done,
// the pods ended, and the kernel's lines.
func printCrash(out io.Writer, kc *crashrecord.KernelCrash) {
	s := kc.Spec
	w := tabwriter.NewWriter(out, 0, 4, 1, ' ', 0)
	row := func(k, v string) {
		if v != "" {
			fmt.Fprintf(w, "%s:\t%s\n", k, v)
		}
	}
	row("Incident", kc.Name)
	row("Node", strings.TrimSpace(s.Node.Name+" "+string(s.Node.UID)))
	row("Source", s.Source)
	row("Kind", fmt.Sprintf("%s (fatal: %v)", s.Kind, s.Fatal))
	row("Reason", s.Reason)
	row("Cause", s.Cause)
	row("Module", s.Module)
	if s.Task != "" {
		row("Task", fmt.Sprintf("%s (pid %d)", s.Task, s.PID))
	}
	row("Kernel", s.KernelRelease)
	row("Signature", s.Signature.ID+" "+s.Signature.Title)
	row("Frames", strings.Join(s.Signature.Frames, " < "))
	row("First line", s.FirstTime.UTC().Format(time.RFC3339Nano))
	row("Last line", s.LastTime.UTC().Format(time.RFC3339Nano))
	row("Outcome", s.Outcome)
	if s.ConfirmedDeadAt != nil {
		row("Confirmed dead", s.ConfirmedDeadAt.UTC().Format(time.RFC3339Nano))
	}
	if s.CappedAt != nil {
		row("Held by the cap", "from "+s.CappedAt.UTC().Format(time.RFC3339Nano)+" (--max-node-deletions-per-minute)")
	}
	if s.NodeDeletedAt != nil {
		row("Node deleted", s.NodeDeletedAt.UTC().Format(time.RFC3339Nano))
	}
	row("Recorded by", s.ReportedBy)
	if s.Storm {
		row("Storm", "yes: this signature struck too many nodes at once")
	}
	row("Pods ended", strconv.Itoa(s.PodCount))
	w.Flush()
	for _, p := range s.Pods {
		owner := ""
		if p.OwnerKind != "" {
			owner = " (" + p.OwnerKind + " " + p.OwnerName + ")"
		}
		fmt.Fprintf(out, "  %s/%s%s\n", p.Namespace, p.Name, owner)
	}
	if len(s.Pods) < s.PodCount {
		fmt.Fprintf(out, "  ... and %d more\n", s.PodCount-len(s.Pods))
	}
	fmt.Fprintf(out, "Kernel lines (%d", len(s.Lines))
	if s.LinesDropped > 0 {
		fmt.Fprintf(out, ", %d more dropped", s.LinesDropped)
	}
	fmt.Fprintln(out, "):")
	for _, l := range s.Lines {
		fmt.Fprintln(out, "  "+l)
	}
}

// oneLine keeps a text on one line of the table.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
