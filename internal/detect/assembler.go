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
