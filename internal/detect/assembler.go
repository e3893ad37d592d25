package detect

import (
	"time"

	"github.com/lastgasp/lastgasp/internal/filter"
	"github.com/lastgasp/lastgasp/internal/netconsole"
)

// Assembler takes forwarded lines, from either data path, through a
// netconsole decoder and a detector: the whole way from a Line to the
// incidents it completes.
type Assembler struct {
	Decoder  *netconsole.Decoder
	Detector *Detector

	lastTick time.Time
}

// tickEvery bounds how often Line closes due incidents: a Tick looks at
// every open incident, too much work for every line of a flood.
const tickEvery = 100 * time.Millisecond

// DefaultMemoryBudget is the default of the one memory setting that bounds
// a decoder and a detector together (lastgasp run --memory-budget): with
// GOMEMLIMIT 400MiB in a 512Mi pod it leaves the rest of the heap to the
// cluster side (informer caches of Nodes and Pods, client-go).
const DefaultMemoryBudget = 128 << 20

// Budget divides one memory budget, in bytes, among the bounds of a
// decoder and a detector, each of which counts what it really holds: an
// eighth for records in reassembly and lines waiting for their
// continuation, an eighth for the duplicate windows, five eighths for
// the open incidents, a sixteenth for strays; the last sixteenth covers
// what is bounded by count (the ids and sources of recent incidents,
// about 1 MiB) and the counts' rounding. Budget(DefaultMemoryBudget) is
// what zero configurations get.
func Budget(total int) (netconsole.Config, Config) {
	if total <= 0 {
		total = DefaultMemoryBudget
	}
	return netconsole.Config{MaxPendingBytes: total / 8, MaxDedupBytes: total / 8},
		Config{MaxOpenBytes: total / 8 * 5, MaxStrayBytes: total / 16}
}

// NewAssembler returns an Assembler with a decoder and a detector of the
// given configurations.
func NewAssembler(dc netconsole.Config, cfg Config) *Assembler {
	return &Assembler{Decoder: netconsole.NewDecoder(dc), Detector: New(cfg)}
}

// Line decodes one forwarded line and returns the incidents closed by the
// time it was received or by its messages.
func (a *Assembler) Line(l filter.Line) []Incident {
	var out []Incident
	if d := l.Time.Sub(a.lastTick); d >= tickEvery || d < 0 {
		out = a.Detector.Tick(l.Time)
		a.lastTick = l.Time
	}
	for _, m := range a.Decoder.Decode(l.Source, l.Payload, l.Time) {
		out = append(out, a.Detector.Add(m)...)
	}
	return out
}

// Tick closes the incidents whose time is up at now, and expires stale
// fragments; a live collector calls it now and then.
func (a *Assembler) Tick(now time.Time) []Incident {
	var out []Incident
	for _, m := range a.Decoder.Expire(now) {
		out = append(out, a.Detector.Add(m)...)
	}
	return append(out, a.Detector.Tick(now)...)
}

// Flush decodes what the decoder still holds and closes every open
// incident: the end of the input.
func (a *Assembler) Flush() []Incident {
	var out []Incident
	for _, m := range a.Decoder.Flush() {
		out = append(out, a.Detector.Add(m)...)
	}
	return append(out, a.Detector.Flush()...)
}
