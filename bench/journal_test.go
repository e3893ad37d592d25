package bench

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/lastgasp/lastgasp/internal/detect"
	"github.com/lastgasp/lastgasp/internal/journal"
	"github.com/lastgasp/lastgasp/internal/pattern"
)

// BenchmarkJournal measures what the journal adds to an incident: a
// "begin" record (the incident, 22 lines, as a real panic gives) and a
// "done" record, each written and fsynced, on the disk the test's
// temporary directory is on.
func BenchmarkJournal(b *testing.B) {
	j, _, err := journal.Open(journal.Config{Dir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	defer j.Close()
	inc := detect.Incident{
		Source: netip.MustParseAddr("10.0.0.2"), Kind: pattern.KindSysrq, Fatal: true,
		Reason: "Kernel panic - not syncing: sysrq triggered crash", Cause: "sysrq: Trigger a crash",
		First: time.Now(), Last: time.Now(), PanicAt: time.Now(),
	}
	for i := range 22 {
		inc.Lines = append(inc.Lines, fmt.Sprintf("[    3.%06d] a console line of a panic's call trace, about as long as they come", i))
	}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		inc.ID = fmt.Sprintf("%016x", i)
		if err := j.Begin(inc); err != nil {
			b.Fatal(err)
		}
		if err := j.Done(inc.ID, "cleaned up"); err != nil {
			b.Fatal(err)
		}
	}
}
