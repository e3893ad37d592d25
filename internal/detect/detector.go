package detect

import (
	"container/list"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/netip"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"github.com/hashicorp/golang-lru/v2/simplelru"

	"github.com/lastgasp/lastgasp/internal/netconsole"
	"github.com/lastgasp/lastgasp/internal/pattern"
)

// Config configures a Detector. Zero fields take defaults.
type Config struct {
	// Patterns is the trigger table. Default pattern.Default().
	Patterns *pattern.Table
	// QuietPeriod ends an incident: a line this long after its latest
	// by the kernel's clock (where both have one) starts the next, and
	// Tick closes an incident whose source has sent nothing for this
	// long and a second's grace. Default 5s.
	QuietPeriod time.Duration
	// SettleTime closes a fatal incident this long after its panic line,
	// so that the trace printed after the panic is part of it. Default 2s.
	SettleTime time.Duration
	// MaxLines bounds an incident's lines. Default 200.
	MaxLines int
	// MaxOpen bounds the incidents open at once (one per source); past it
	// the least recently heard is closed early. Default 100,000.
	MaxOpen int
	// MaxOpenBytes bounds what the open incidents hold, as the heap
	// holds it (their lines, triggers and bookkeeping); past it the least
	// recently heard are closed early. Without it a flood of triggers
	// from spoofed sources could hold MaxOpen × MaxLines lines. Default
	// DefaultMaxOpenBytes.
	MaxOpenBytes int
	// MaxStrayBytes bounds what the lines of no incident held a while
	// (see Strays) take; past it the least recently heard source's are
	// forgotten. Default DefaultMaxStrayBytes.
	MaxStrayBytes int
}

// DefaultSettleTime is how long a fatal incident stays open after its
// panic line, by default.
const DefaultSettleTime = 2 * time.Second

// The default bounds: with the decoder's defaults, DefaultMemoryBudget in
// all (see Budget).
const (
	DefaultMaxOpenBytes  = 80 << 20
	DefaultMaxStrayBytes = 8 << 20
)

func (c Config) withDefaults() Config {
	if c.Patterns == nil {
		c.Patterns = pattern.Default()
	}
	if c.QuietPeriod <= 0 {
		c.QuietPeriod = 5 * time.Second
	}
	if c.SettleTime <= 0 {
		c.SettleTime = DefaultSettleTime
	}
	if c.MaxLines <= 0 {
		c.MaxLines = 200
	}
	if c.MaxOpen <= 0 {
		c.MaxOpen = 100_000
	}
	if c.MaxOpenBytes <= 0 {
		c.MaxOpenBytes = DefaultMaxOpenBytes
	}
	if c.MaxStrayBytes <= 0 {
		c.MaxStrayBytes = DefaultMaxStrayBytes
	}
	return c
}

// Counters count what a Detector did.
type Counters struct {
	Messages    uint64 // messages given to Add
	Triggers    uint64 // trigger lines seen
	Unconfirmed uint64 // pattern matches a trigger's confirmation refused
	NotKernel   uint64 // pattern matches in lines a process wrote (extended, facility not kernel): context at most
	Incidents   uint64 // incidents closed and returned
	Duplicates  uint64 // incidents not returned again: same id as a recent one
	Strays      uint64 // lines that came before their incident's trigger, joined to it
	ClosedEarly uint64 // incidents closed before their time to make room (MaxOpen, MaxOpenBytes)
	LostLines   uint64 // lines of the incidents returned that never arrived (Incident.LinesLost)
}

// Detector assembles incidents. It is not safe for concurrent use.
type Detector struct {
	cfg  Config
	open map[netip.Addr]*building
	// dying are the open incidents that are fatal: Tick closes them
	// SettleTime after their panic line.
	dying map[netip.Addr]*building
	byAge *list.List // the open incidents, least recently heard first
	// openBytes is what the open incidents' lines take (see MaxOpenBytes).
	openBytes int
	recent    *simplelru.LRU[string, struct{}]                 // ids of incidents returned lately
	dead      *simplelru.LRU[netip.Addr, time.Time]            // when each source's last fatal incident closed
	strays    *simplelru.LRU[netip.Addr, []netconsole.Message] // lines of no incident, lately
	// strayBytes is what strays hold (see MaxStrayBytes).
	strayBytes int
	counters   Counters
}

// Strays are lines that belong to no open incident when they arrive.
// Behind the XDP program every forwarded line follows a trigger, but the
// ring buffer and the backstop socket are read side by side: when the
// ring buffer overflows, the context lines that went to the socket can
// be read before the trigger that stayed in the ring buffer. So the
// latest strays of each source wait a little, and an incident opened
// after them takes those the kernel logged after its trigger.
const (
	maxStraySources    = 65536            // sources whose strays are kept (least recent forgotten; MaxStrayBytes bounds them first)
	maxStraysPerSource = 320              // the latest lines kept a source: more than a burst (loader.DefaultBurstLines, 256, and the 20 after the end marker)
	strayWindow        = 10 * time.Second // how long a stray waits (the program's burst timeout)
	strayOverhead      = 160              // a source's LRU entry and slice header
)

// strayCost is what a source's kept strays hold.
func strayCost(kept []netconsole.Message) int {
	n := strayOverhead + (cap(kept)-len(kept))*msgSlot
	for _, m := range kept {
		n += msgSize(m)
	}
	return n
}

// lateMarker is how long after a fatal incident closed a lone end-of-panic
// marker from the same source is taken as that panic's last word, not a
// new incident.
const lateMarker = time.Minute

// New returns a Detector with cfg.
func New(cfg Config) *Detector {
	cfg = cfg.withDefaults()
	// NewLRU fails only for a size below 1: these are constants.
	recent, _ := simplelru.NewLRU[string, struct{}](4096, nil)
	dead, _ := simplelru.NewLRU[netip.Addr, time.Time](4096, nil)
	d := &Detector{cfg: cfg, open: map[netip.Addr]*building{}, dying: map[netip.Addr]*building{},
		byAge: list.New(), recent: recent, dead: dead}
	d.strays, _ = simplelru.NewLRU(maxStraySources, func(_ netip.Addr, kept []netconsole.Message) {
		d.strayBytes -= strayCost(kept)
	})
	return d
}

// Counters returns what the detector has done so far.
func (d *Detector) Counters() Counters { return d.counters }

// Open returns how many incidents are open (being assembled) now.
func (d *Detector) Open() int { return len(d.open) }

// SetPatterns replaces the trigger table, for incidents opened from now.
func (d *Detector) SetPatterns(t *pattern.Table) { d.cfg.Patterns = t }

// building is an open incident.
type building struct {
	source   netip.Addr
	elem     *list.Element // in Detector.byAge
	bytes    int           // what msgs take (see MaxOpenBytes)
	msgs     []netconsole.Message
	dropped  int
	triggers []trigger // in arrival order; at most maxTriggers
	fatal    bool
	panicAt  time.Time // when the first panic line was received
	ended    bool      // the end marker arrived: close now
	lastSeen time.Time
	// lastUptime is the latest kernel time of its lines, if any had one:
	// a line QuietPeriod or more after it, by the kernel's clock, starts
	// the next incident.
	lastUptime time.Duration
	hasUptime  bool
	// The msgids (netconsole sysdata) of its lines, if they had them:
	// their lowest and highest as offsets from the first one heard (the
	// counter wraps at 2^32), and how many lines had one.
	msgidBase        uint32
	msgidLo, msgidHi int64
	msgids           int64
}

// msgSlot is what a message takes in a slice; msgSize adds what it points
// to: its strings (each rounded up to the allocator's 16 bytes) and its
// dictionary (a map of a few entries: about 300 bytes, and its strings).
const msgSlot = int(unsafe.Sizeof(netconsole.Message{}))

// msgSize is what a kept message holds, as MaxOpenBytes counts it.
func msgSize(m netconsole.Message) int {
	n := msgSlot + strSize(m.Text) + strSize(m.Caller) + strSize(m.Release) + strSize(m.Node)
	if m.Dict != nil {
		n += 300
		for k, v := range m.Dict {
			n += strSize(k) + strSize(v)
		}
	}
	return n
}

// strSize is what a string's bytes take on the heap.
func strSize(s string) int { return (len(s) + 15) &^ 15 }

// trigger is a trigger line and its pattern's kind.
type trigger struct {
	msg  netconsole.Message
	kind pattern.Kind
}

// trigSlot is what a trigger takes in a slice (its strings are the
// message's, counted once in msgs).
const trigSlot = int(unsafe.Sizeof(trigger{}))

// buildingOverhead is what an open incident holds beyond its messages and
// triggers: the struct, its list element and map entry.
const buildingOverhead = int(unsafe.Sizeof(building{})) + 48 + 64

// maxTriggers bounds the trigger lines an incident keeps (a storm of
// WARNs should not grow it without end).
const maxTriggers = 64

// Add gives the detector one message, and returns the incidents it closes
// (at most the one of its source, on the end-of-panic marker).
func (d *Detector) Add(m netconsole.Message) []Incident {
	d.counters.Messages++
	addr := m.Source.Addr()
	b := d.open[addr]
	trig, isTrigger := d.trigger(m)
	var out []Incident
	if b != nil && d.startsNext(b, m) {
		out, b = d.close(addr), nil
	}
	if b == nil {
		if !isTrigger {
			d.keepStray(addr, m)
			return out // not part of any incident, yet
		}
		if strings.HasPrefix(m.Text, panicEndPrefix) {
			if closed, ok := d.dead.Get(addr); ok && m.Received.Sub(closed) < lateMarker {
				return out // the end of a panic already reported
			}
		}
		if len(d.open) >= d.cfg.MaxOpen {
			return append(out, d.closeOldest(m)...)
		}
		b = &building{source: addr, bytes: buildingOverhead}
		d.open[addr] = b
		b.elem = d.byAge.PushBack(b)
		b.add(m, trig, isTrigger, d.cfg.MaxLines)
		d.adoptStrays(b, m)
		d.openBytes += b.bytes
	} else {
		d.byAge.MoveToBack(b.elem)
		before := b.bytes
		b.add(m, trig, isTrigger, d.cfg.MaxLines)
		d.openBytes += b.bytes - before
	}
	if b.fatal {
		d.dying[addr] = b
	}
	if b.ended {
		out = append(out, d.close(addr)...)
	}
	// Over the memory budget: the least recently heard go first (never
	// the one just added to, which is the most recent).
	for d.openBytes > d.cfg.MaxOpenBytes && d.byAge.Len() > 1 {
		d.counters.ClosedEarly++
		out = append(out, d.close(d.byAge.Front().Value.(*building).source)...)
	}
	return out
}

// keepStray keeps a line of no incident for a while.
func (d *Detector) keepStray(addr netip.Addr, m netconsole.Message) {
	kept, _ := d.strays.Get(addr)
	before := 0
	if kept != nil {
		before = strayCost(kept)
	}
	if len(kept) >= maxStraysPerSource {
		kept = append(kept[:0:0], kept[1:]...) // the oldest goes
	}
	kept = append(kept, m)
	d.strays.Add(addr, kept) // may forget the least recent (the callback uncounts it)
	d.strayBytes += strayCost(kept) - before
	// Over the budget: the least recently heard go first (never this
	// source's, the most recent).
	for d.strayBytes > d.cfg.MaxStrayBytes && d.strays.Len() > 1 {
		d.strays.RemoveOldest()
	}
}

// adoptStrays gives a new incident, opened by trigger, its source's
// strays that the kernel logged after the trigger and that arrived
// within strayWindow of it.
func (d *Detector) adoptStrays(b *building, trigger netconsole.Message) {
	kept, ok := d.strays.Get(b.source)
	if !ok {
		return
	}
	d.strays.Remove(b.source)
	lastSeen := b.lastSeen
	for _, m := range kept {
		if trigger.Received.Sub(m.Received) > strayWindow || !loggedAfter(m, trigger) {
			continue
		}
		b.add(m, pattern.Pattern{}, false, d.cfg.MaxLines)
		d.counters.Strays++
	}
	b.lastSeen = lastSeen // strays arrived earlier: they do not extend the quiet period
}

// loggedAfter reports whether the kernel logged m after t, as far as the
// two say: by sequence number, else kernel time; lines that carry
// neither are taken to follow.
func loggedAfter(m, t netconsole.Message) bool {
	switch {
	case m.HasSeq && t.HasSeq:
		return m.Seq > t.Seq
	case m.HasUptime && t.HasUptime:
		return m.Uptime >= t.Uptime
	}
	return true
}

// startsNext reports whether m, from b's source, comes after b's quiet
// period and so starts the next incident. The kernel's clock decides when
// both have a kernel time (a new boot's lower one too), so that every
// collector splits alike whatever the network delays and whenever its
// quiet-close tick runs; else the times the lines were received.
func (d *Detector) startsNext(b *building, m netconsole.Message) bool {
	if m.HasUptime && b.hasUptime {
		return m.Uptime-b.lastUptime >= d.cfg.QuietPeriod || b.lastUptime-m.Uptime >= newBoot
	}
	return m.Received.Sub(b.lastSeen) >= d.cfg.QuietPeriod
}

// newBoot is how far a line's kernel time may be behind its incident's
// latest and still be of the same boot (lines of one boot can come out
// of order by the ring buffer and the backstop socket, by far less).
const newBoot = time.Minute

// quietGrace is how much longer than QuietPeriod, by the collector's
// clock, Tick waits before closing a quiet incident: a line up to
// QuietPeriod after the last by the kernel's clock but delayed on its way
// still joins it (startsNext), on every collector.
const quietGrace = time.Second

// closeOldest closes the least recently heard incident to make room, then
// adds m.
func (d *Detector) closeOldest(m netconsole.Message) []Incident {
	d.counters.ClosedEarly++
	out := d.close(d.byAge.Front().Value.(*building).source)
	return append(out, d.Add(m)...)
}

// Tick closes the incidents whose time is up at now: quiet for
// QuietPeriod (and quietGrace), or fatal and settled. It looks only at
// those that can be due: the least recently heard, from the front of the
// list by age until one is not quiet, and the fatal ones; not at every
// open incident (a flood of forged triggers opens tens of thousands).
func (d *Detector) Tick(now time.Time) []Incident {
	var out []Incident
	for e := d.byAge.Front(); e != nil; e = d.byAge.Front() {
		b := e.Value.(*building)
		if now.Sub(b.lastSeen) < d.cfg.QuietPeriod+quietGrace {
			break
		}
		out = append(out, d.close(b.source)...)
	}
	for addr, b := range d.dying {
		if now.Sub(b.panicAt) >= d.cfg.SettleTime {
			out = append(out, d.close(addr)...)
		}
	}
	sortIncidents(out)
	return out
}

// Flush closes every open incident (end of input).
func (d *Detector) Flush() []Incident {
	var out []Incident
	for addr := range d.open {
		out = append(out, d.close(addr)...)
	}
	sortIncidents(out)
	return out
}

func sortIncidents(in []Incident) {
	sort.Slice(in, func(i, j int) bool {
		if !in[i].First.Equal(in[j].First) {
			return in[i].First.Before(in[j].First)
		}
		return in[i].ID < in[j].ID
	})
}

// close finishes the source's incident; it is returned unless an incident
// with its id was returned lately.
func (d *Detector) close(addr netip.Addr) []Incident {
	b := d.open[addr]
	delete(d.open, addr)
	delete(d.dying, addr)
	d.byAge.Remove(b.elem)
	d.openBytes -= b.bytes
	inc := b.incident()
	if inc.Fatal {
		d.dead.Add(addr, b.lastSeen)
	}
	if _, seen := d.recent.Get(inc.ID); seen {
		d.counters.Duplicates++
		return nil
	}
	d.recent.Add(inc.ID, struct{}{})
	d.counters.Incidents++
	d.counters.LostLines += uint64(inc.LinesLost)
	return []Incident{inc}
}

// trigger reports whether m is a trigger line, and its pattern: a line
// the table matches and its pattern confirms (Pattern.Confirm), or the
// kernel's panic line or end marker, which are recognised whatever the
// table (a patterns file's) says.
//
// Only the kernel's own lines trigger: an extended record whose facility
// is not the kernel's (a process writing /dev/kmsg, which the kernel
// tags facility user unless the writer names another) is context at
// most. A basic line does not say; it is taken as the kernel's.
func (d *Detector) trigger(m netconsole.Message) (pattern.Pattern, bool) {
	text := m.Text
	p, ok := d.cfg.Patterns.MatchText([]byte(text))
	switch {
	case !ok && dying(text):
		// The kernel's dying words, whatever the table says.
		p = pattern.Pattern{Prefix: pattern.PanicPrefix, Kind: pattern.KindPanic}
	case !ok:
		return p, false
	}
	if m.Facility > 0 {
		d.counters.NotKernel++
		return p, false
	}
	if !p.Confirmed(text) {
		d.counters.Unconfirmed++
		return p, false
	}
	d.counters.Triggers++
	return p, true
}

// The two lines that say the kernel is dying.
const (
	panicPrefix    = pattern.PanicPrefix
	panicEndPrefix = pattern.PanicEndPrefix
)

// dying reports whether text is one of them.
func dying(text string) bool {
	return strings.HasPrefix(text, panicPrefix) || strings.HasPrefix(text, panicEndPrefix)
}

func (b *building) add(m netconsole.Message, trig pattern.Pattern, isTrigger bool, maxLines int) {
	if m.Received.After(b.lastSeen) {
		// Never back: a cut line given up on comes with the time its
		// first part was received.
		b.lastSeen = m.Received
	}
	if m.HasUptime && (!b.hasUptime || m.Uptime > b.lastUptime) {
		b.lastUptime, b.hasUptime = m.Uptime, true
	}
	if m.HasMsgID {
		if b.msgids == 0 {
			b.msgidBase = m.MsgID
		}
		off := int64(int32(m.MsgID - b.msgidBase))
		b.msgidLo, b.msgidHi = min(b.msgidLo, off), max(b.msgidHi, off)
		b.msgids++
	}
	kept := len(b.msgs) < maxLines
	if kept {
		before := cap(b.msgs)
		b.msgs = append(b.msgs, m)
		b.bytes += (cap(b.msgs)-before)*msgSlot + msgSize(m) - msgSlot
	} else {
		b.dropped++
	}
	if !isTrigger {
		return
	}
	// The panic and its end marker are always kept: they decide the
	// reason and the id, which collectors must agree on.
	dying := strings.HasPrefix(m.Text, panicPrefix) || strings.HasPrefix(m.Text, panicEndPrefix)
	if len(b.triggers) < maxTriggers || dying {
		before := cap(b.triggers)
		b.triggers = append(b.triggers, trigger{msg: m, kind: trig.Kind})
		b.bytes += (cap(b.triggers) - before) * trigSlot
		if !kept { // its strings are held by the trigger alone
			b.bytes += msgSize(m) - msgSlot
		}
	}
	switch {
	case strings.HasPrefix(m.Text, panicPrefix):
		b.fatal = true
		if b.panicAt.IsZero() {
			b.panicAt = m.Received
		}
	case strings.HasPrefix(m.Text, panicEndPrefix):
		b.fatal, b.ended = true, true
		if b.panicAt.IsZero() {
			b.panicAt = m.Received
		}
	}
}

// incident renders the open incident. Cause, kind and reason are read in
// kernel order, so that collectors that heard the lines in different
// orders agree: the cause is the first trigger, the kind the first
// non-warning trigger's (else warning) unless the panic names its own,
// the reason the first panic line (else the end marker's copy of it).
func (b *building) incident() Incident {
	msgs := append([]netconsole.Message(nil), b.msgs...)
	sortKernelOrder(msgs, func(m netconsole.Message) netconsole.Message { return m })
	trigs := append([]trigger(nil), b.triggers...)
	sortKernelOrder(trigs, func(t trigger) netconsole.Message { return t.msg })

	cause := &trigs[0].msg
	inc := Incident{
		Source:       b.source,
		Fatal:        b.fatal,
		Cause:        cause.Text,
		Reason:       cause.Text,
		LinesDropped: b.dropped,
		PanicAt:      b.panicAt,
		First:        b.msgs[0].Received,
		Last:         b.lastSeen,
	}
	var reason *netconsole.Message
	for i := range trigs {
		t := &trigs[i]
		// The panic line says the kernel is dying, not why (unless its
		// reason names a kind, below): it does not displace what caused
		// it, and "panic" is the kind only of a panic with no other
		// trigger. A warning gives way to any other report.
		switch {
		case t.kind == pattern.KindPanic:
		case inc.Kind == "" || (inc.Kind == pattern.KindWarning && t.kind != pattern.KindWarning):
			inc.Kind = t.kind
		}
		switch {
		case strings.HasPrefix(t.msg.Text, panicPrefix):
			if reason == nil || !strings.HasPrefix(reason.Text, panicPrefix) {
				reason = &t.msg
			}
		case strings.HasPrefix(t.msg.Text, panicEndPrefix):
			if reason == nil {
				reason = &t.msg
			}
		}
	}
	if inc.Kind == "" {
		inc.Kind = pattern.KindPanic
	}
	if reason != nil {
		inc.Reason = panicReason(reason.Text)
		if k, ok := pattern.KindOfPanic(inc.Reason); ok {
			inc.Kind = k
		}
	}
	if inc.Kind == pattern.KindOops && strings.HasPrefix(inc.Cause, "Oops: general protection fault") {
		inc.Kind = pattern.KindGPF
	}
	var traceModule string // the first module a call trace names
	for _, m := range msgs {
		inc.Lines = append(inc.Lines, render(m))
		if inc.Task == "" {
			inc.Task, inc.PID = taskOf(m.Text)
		}
		if inc.Module == "" {
			inc.Module = moduleOf(m.Text)
		}
		if traceModule == "" {
			traceModule = traceModuleOf(m.Text)
		}
		if m.Received.Before(inc.First) {
			inc.First = m.Received
		}
		if inc.NodeName == "" {
			inc.NodeName = m.Node
		}
		if inc.Release == "" {
			inc.Release = m.Release
		}
	}
	if inc.Module == "" {
		inc.Module = traceModule
	}
	if lost := b.msgidHi - b.msgidLo + 1 - b.msgids; b.msgids > 0 && lost > 0 {
		inc.LinesLost = int(lost)
	}
	inc.ID = incidentID(b.source, idTrigger(trigs))
	return inc
}

// sortKernelOrder orders xs as the kernel logged their messages: by
// sequence number when all have one, else by kernel time when all have
// one, else as received.
func sortKernelOrder[T any](xs []T, msg func(T) netconsole.Message) {
	allSeq, allUptime := true, true
	for _, x := range xs {
		m := msg(x)
		allSeq = allSeq && m.HasSeq
		allUptime = allUptime && m.HasUptime
	}
	switch {
	case allSeq:
		sort.SliceStable(xs, func(i, j int) bool { return msg(xs[i]).Seq < msg(xs[j]).Seq })
	case allUptime:
		sort.SliceStable(xs, func(i, j int) bool { return msg(xs[i]).Uptime < msg(xs[j]).Uptime })
	}
}

// render writes a message as the console shows it.
func render(m netconsole.Message) string {
	if !m.HasUptime {
		return m.Text
	}
	return fmt.Sprintf("[%5d.%06d] %s", m.Uptime/time.Second, (m.Uptime%time.Second)/time.Microsecond, m.Text)
}

// panicReason turns the end marker "---[ end Kernel panic - not syncing:
// X ]---" into the panic line it repeats; other lines are returned as
// they are.
func panicReason(text string) string {
	if s, ok := strings.CutPrefix(text, "---[ end "); ok {
		return strings.TrimSuffix(strings.TrimSpace(s), " ]---")
	}
	return text
}

// Where the kernel names a task or a module.
var (
	// "CPU: 0 PID: 114 Comm: insmod Tainted: ..." (comm may hold spaces;
	// it ends before " Tainted" or " Not tainted" or the line's end)
	commRE = regexp.MustCompile(`^CPU: \d+ (?:UID: \d+ )?PID: (\d+) Comm: (.+?)(?: (?:Not tainted|Tainted:).*)?$`)
	// "INFO: task insmod:114 blocked for more than 120 seconds."
	hungRE = regexp.MustCompile(`^INFO: task (.+):(\d+) blocked for more than`)
	// "watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [insmod:114]"
	lockupRE = regexp.MustCompile(`soft lockup - CPU#\d+ stuck for \d+s! \[(.+):(\d+)\]`)
	// "Out of memory: Killed process 1234 (stress) total-vm:..."
	oomRE = regexp.MustCompile(`^Out of memory: Killed process (\d+) \((.+?)\)`)
	// "RIP: 0010:crashmod_init+0x49/0x1000 [crashmod]", and WARN's
	// "WARNING: CPU: 0 PID: 111 at f.c:28 crashmod_init+0x89/0x1000 [crashmod]"
	moduleRE = regexp.MustCompile(`^(?:RIP: 0010:|WARNING: CPU: \d+ PID: \d+ at ).*\+0x[0-9a-f]+/0x[0-9a-f]+ \[([A-Za-z0-9_-]+)\]`)
	// A reliable call trace frame in a module, " lg_hung_fn+0x1d/0x40
	// [crashmod]" (frames marked "? " are guesses and are skipped).
	traceRE = regexp.MustCompile(`^\s+[A-Za-z0-9_.]+\+0x[0-9a-f]+/0x[0-9a-f]+ \[([A-Za-z0-9_-]+)\]`)
)

// taskOf returns the task a line names, if it names one.
func taskOf(text string) (string, int) {
	if m := commRE.FindStringSubmatch(text); m != nil {
		pid, _ := strconv.Atoi(m[1])
		return m[2], pid
	}
	for _, re := range []*regexp.Regexp{hungRE, lockupRE} {
		if m := re.FindStringSubmatch(text); m != nil {
			pid, _ := strconv.Atoi(m[2])
			return m[1], pid
		}
	}
	if m := oomRE.FindStringSubmatch(text); m != nil {
		pid, _ := strconv.Atoi(m[1])
		return m[2], pid
	}
	return "", 0
}

// traceModuleOf returns the module of a call trace frame, if the line is
// one in a module.
func traceModuleOf(text string) string {
	if m := traceRE.FindStringSubmatch(text); m != nil {
		return m[1]
	}
	return ""
}

// moduleOf returns the module a line blames, if it names one.
func moduleOf(text string) string {
	if m := moduleRE.FindStringSubmatch(text); m != nil {
		return m[1]
	}
	return ""
}

// incidentID hashes what every collector that heard the incident shares,
// whatever lines it lost and whatever its clock: the source, and the
// first trigger (see idTrigger) with its kernel time, which tells one
// boot's failure from the next's (two boots printing the same first
// trigger at the same microsecond of uptime are one). Not the panic line
// nor the end marker, which one collector may have lost, nor the lines
// after. A first trigger without a kernel time (the basic format without
// printk.time) brings the hour it was received instead: collectors
// either side of an hour disagree, so turn printk.time on.
func incidentID(src netip.Addr, first *netconsole.Message) string {
	h := sha256.New()
	fmt.Fprintf(h, "%s\n", src)
	when := "uptime " + strconv.FormatInt(first.Uptime.Microseconds(), 10)
	if !first.HasUptime {
		when = "received " + first.Received.UTC().Truncate(time.Hour).Format(time.RFC3339)
	}
	fmt.Fprintf(h, "%s %s\n", when, first.Text)
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// idTrigger returns the trigger an incident's id is made of: the first in
// kernel order (trigs is sorted so), skipping the end marker, which comes
// after the lines that matter and which a collector may lose, unless the
// incident has no other.
func idTrigger(trigs []trigger) *netconsole.Message {
	for i := range trigs {
		if !strings.HasPrefix(trigs[i].msg.Text, panicEndPrefix) {
			return &trigs[i].msg
		}
	}
	return &trigs[0].msg
}
