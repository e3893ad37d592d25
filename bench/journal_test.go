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
	inc := journalIncident()
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

// journalIncident is a real panic's incident as the journal keeps it: 22
// lines.
func journalIncident() detect.Incident {
	inc := detect.Incident{
		Source: netip.MustParseAddr("10.0.0.2"), Kind: pattern.KindSysrq, Fatal: true,
		Reason: "Kernel panic - not syncing: sysrq triggered crash", Cause: "sysrq: Trigger a crash",
		First: time.Now(), Last: time.Now(), PanicAt: time.Now(),
	}
	for i := range 22 {
		inc.Lines = append(inc.Lines, fmt.Sprintf("[    3.%06d] a console line of a panic's call trace, about as long as they come", i))
	}
	return inc
}

// BenchmarkJournalGroupCommit measures the journal under a flood of
// incidents as the daemon writes them: BeginAll with a batch of waiting
// incidents (one fsync for the batch: a group commit), then a Done each
// (written, not synced). It reports the cost of one incident (ns/incident)
// and how many incidents a second one goroutine can take on that way
// (incidents/s), for each batch size; batch 1 is one fsync an incident,
// what the decode loop paid before issue 13.
func BenchmarkJournalGroupCommit(b *testing.B) {
	for _, batch := range []int{1, 16, 512} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			j, _, err := journal.Open(journal.Config{Dir: b.TempDir()})
			if err != nil {
				b.Fatal(err)
			}
			defer j.Close()
			incs := make([]detect.Incident, batch)
			for i := range incs {
				incs[i] = journalIncident()
			}
			n := 0
			b.ReportAllocs()
			for b.Loop() {
				for i := range incs {
					incs[i].ID = fmt.Sprintf("%016x", n)
					n++
				}
				taken, err := j.BeginAll(incs)
				if err != nil || len(taken) != batch {
					b.Fatalf("%d of %d taken: %v", len(taken), batch, err)
				}
				for _, inc := range taken {
					if err := j.Done(inc.ID, "report-only"); err != nil {
						b.Fatal(err)
					}
				}
			}
			perIncident := float64(b.Elapsed().Nanoseconds()) / float64(n)
			b.ReportMetric(perIncident, "ns/incident")
			b.ReportMetric(1e9/perIncident, "incidents/s")
		})
	}
}
