package bench

import (
	"cmp"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// writeFloodResults writes flood.json, flood.md and the three plots of
// res into dir.
func writeFloodResults(dir string, res floodResults, cfg floodConfig, loadStart, loadEnd float64) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("flood results: %w", err)
	}
	raw, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return fmt.Errorf("flood results: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "flood.json"), append(raw, '\n'), 0o644); err != nil {
		return fmt.Errorf("flood results: %w", err)
	}
	md := floodMarkdown(res, cfg, loadStart, loadEnd)
	if err := os.WriteFile(filepath.Join(dir, "flood.md"), []byte(md), 0o644); err != nil {
		return fmt.Errorf("flood results: %w", err)
	}
	plots := []struct {
		file, title, y  string
		logY, legendTop bool
		value           func(floodRow) float64
	}{
		{"flood-handled.png", "Lines handled", "handled (packets/s)", true, true, func(r floodRow) float64 { return r.HandledPPS }},
		{"flood-cpu.png", "Receiver thread CPU (user + sys)", "share of one core", false, true, func(r floodRow) float64 { return (r.CPUUserS + r.CPUSysS) / r.DurationS }},
		{"flood-recall.png", "Panic recall", "panics detected / sent", false, false, func(r floodRow) float64 { return float64(r.PanicsDetected) / float64(r.PanicsSent) }},
	}
	for _, p := range plots {
		if err := floodPlot(filepath.Join(dir, p.file), res, p.title, p.y, p.logY, p.legendTop, p.value); err != nil {
			return err
		}
	}
	return nil
}

// floodSeries is one line of the plots and of the headline: one receiver
// fed one way.
type floodSeries struct{ receiver, feed string }

// String is the series' legend: "socket (sendmmsg)".
func (s floodSeries) String() string { return fmt.Sprintf("%s (%s)", s.receiver, s.feed) }

// seriesOf returns the series of rows in the order they first appear (a
// row without a feed is of the live frames, the only feed before there
// were two).
func seriesOf(rows []floodRow) []floodSeries {
	var out []floodSeries
	for _, r := range rows {
		if s := rowSeries(r); !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	return out
}

// rowSeries is r's series.
func rowSeries(r floodRow) floodSeries {
	return floodSeries{r.Receiver, cmp.Or(r.Feed, feedLive)}
}

// floodPlot draws value against the offered rate, one line a receiver and
// feed, on a logarithmic rate axis (and value axis if logY), the legend at the top
// left or the bottom left.
func floodPlot(path string, res floodResults, title, y string, logY, legendTop bool, value func(floodRow) float64) error {
	p := plot.New()
	p.Title.Text = fmt.Sprintf("%s (%s, %s)", title, res.Machine, res.Kernel)
	p.Title.TextStyle.Font.Size = vg.Points(9)
	p.X.Label.Text = "offered (packets/s)"
	p.Y.Label.Text = y
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = plot.LogTicks{Prec: -1}
	p.Legend.Left, p.Legend.Top = true, legendTop
	if logY {
		p.Y.Scale = plot.LogScale{}
		p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
	}
	// A receiver keeps its colour and marker across feeds; the feed
	// is the line's dashes (live frames solid, sendmmsg dashed).
	for _, s := range seriesOf(res.Rows) {
		var xys plotter.XYs
		for _, r := range res.Rows {
			if v := value(r); rowSeries(r) == s && r.OfferedPPS > 0 && (v > 0 || !logY) {
				xys = append(xys, plotter.XY{X: r.OfferedPPS, Y: v})
			}
		}
		slices.SortFunc(xys, func(a, b plotter.XY) int { return cmp.Compare(a.X, b.X) })
		l, pts, err := plotter.NewLinePoints(xys)
		if err != nil {
			return fmt.Errorf("plot %s: %s: %w", path, s, err)
		}
		i := slices.Index(floodReceivers, s.receiver)
		l.Color, pts.Color, pts.Shape = plotutil.Color(i), plotutil.Color(i), plotutil.Shape(i)
		if s.feed != feedLive {
			l.Dashes = []vg.Length{vg.Points(4), vg.Points(2)}
		}
		p.Add(l, pts)
		p.Legend.Add(s.String(), l, pts)
	}
	if err := p.Save(16*vg.Centimeter, 10*vg.Centimeter, path); err != nil {
		return fmt.Errorf("plot %s: %w", path, err)
	}
	return nil
}

// floodMarkdown renders res as flood.md: the headline (the highest offered
// rate at which each receiver, fed each way, detected every panic, and at every lower
// offered rate too; 0 if it missed one at its lowest), the rows, and the ordinary-only rows.
func floodMarkdown(res floodResults, cfg floodConfig, loadStart, loadEnd float64) string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "# Scenario 1: flood (`make bench-flood`)\n\n")
	fmt.Fprintf(&sb, "Machine: %s; kernel %s; %s a row, %d panics a row; load average %.1f at the start, %.1f at the end; %s.\n\n",
		res.Machine, res.Kernel, cfg.duration, cfg.panics, loadStart, loadEnd, time.Now().UTC().Format("2006-01-02 15:04 UTC"))
	fmt.Fprintf(&sb, "## Highest offered rate with every panic detected\n\n| receiver | feed | offered (pps) |\n| --- | --- | ---: |\n")
	for _, s := range seriesOf(res.Rows) {
		var rows []floodRow
		for _, r := range res.Rows {
			if rowSeries(r) == s {
				rows = append(rows, r)
			}
		}
		slices.SortFunc(rows, func(a, b floodRow) int { return cmp.Compare(a.OfferedPPS, b.OfferedPPS) })
		best := 0.0
		for _, r := range rows {
			if r.PanicsDetected < r.PanicsSent {
				break
			}
			best = max(best, r.OfferedPPS)
		}
		fmt.Fprintf(&sb, "| `%s` | %s | %.0f |\n", s.receiver, s.feed, best)
	}
	fmt.Fprintf(&sb, "\n## Rows\n\n| receiver | feed | offered pps | handled pps | kernel drops | panics detected / sent | panic lines received / sent | CPU user s | CPU sys s | CPU s per M handled | duration s |\n")
	fmt.Fprintf(&sb, "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	for _, r := range res.Rows {
		fmt.Fprintf(&sb, "| `%s` | %s | %.0f | %.0f | %d | %d / %d | %d / %d | %.3f | %.3f | %.2f | %.2f |\n",
			r.Receiver, rowSeries(r).feed, r.OfferedPPS, r.HandledPPS, r.KernelDrops, r.PanicsDetected, r.PanicsSent,
			r.PanicLinesReceived, r.PanicLinesSent, r.CPUUserS, r.CPUSysS, perMillion(r.floodLoad), r.DurationS)
	}
	fmt.Fprintf(&sb, "\n## Ordinary lines only, at each feed's top rate\n\n| receiver | feed | offered pps | handled pps | kernel drops | CPU user s | CPU sys s | share of a core | duration s |\n")
	fmt.Fprintf(&sb, "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	for _, r := range res.OrdinaryOnly {
		fmt.Fprintf(&sb, "| `%s` | %s | %.0f | %.0f | %d | %.3f | %.3f | %.2f %% | %.2f |\n",
			r.Receiver, cmp.Or(r.Feed, feedLive), r.OfferedPPS, r.HandledPPS, r.KernelDrops, r.CPUUserS, r.CPUSysS,
			100*(r.CPUUserS+r.CPUSysS)/r.DurationS, r.DurationS)
	}
	return sb.String()
}

// perMillion is the receiver thread's CPU seconds per million lines
// handled.
func perMillion(l floodLoad) float64 {
	handled := l.HandledPPS * l.DurationS
	if handled == 0 {
		return 0
	}
	return (l.CPUUserS + l.CPUSysS) / handled * 1e6
}
