package netconsole

import (
	"bytes"
	"container/list"
	"hash/maphash"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/hashicorp/golang-lru/v2/simplelru"
)

// Config bounds a Decoder's memory and time. Zero fields take defaults.
type Config struct {
	// FragmentTimeout drops a record whose fragments have not all
	// arrived this long after its first one. Default 10s.
	FragmentTimeout time.Duration
	// MaxRecordBytes is the largest record reassembled; a fragment
	// claiming a larger total is refused. Default 8192, the kernel's
	// CONSOLE_EXT_LOG_MAX.
	MaxRecordBytes int
	// MaxPendingPerSource is how many records one source may have in
	// reassembly at once. Default 16.
	MaxPendingPerSource int
	// MaxPendingBytes bounds what records in reassembly and lines
	// waiting for their continuation hold, across all sources, as the
	// heap holds it (buffers and bookkeeping). Default 16 MiB.
	MaxPendingBytes int
	// DedupWindow is how many recent messages per source are remembered
	// to drop duplicates. Default 256.
	DedupWindow int
	// MaxSources is how many sources' duplicate windows are remembered
	// (least recently heard forgotten first). Default 100,000.
	MaxSources int
	// MaxDedupBytes bounds what the duplicate windows hold, as the heap
	// holds it: past it the least recently heard source's window is
	// forgotten. Default 16 MiB (a full window takes about 2 KiB, a
	// source heard once about 200 bytes).
	MaxDedupBytes int
	// Allowed, if not empty, are the only networks lines are taken from
	// (lastgasp run --allow): a datagram from any other source is
	// dropped before anything of it is kept, and counted NotAllowed.
	Allowed []netip.Prefix
}

// DefaultMaxPendingBytes and DefaultMaxDedupBytes are the defaults of
// MaxPendingBytes and MaxDedupBytes: an eighth each of the default memory
// budget (package detect's DefaultMemoryBudget).
const (
	DefaultMaxPendingBytes = 16 << 20
	DefaultMaxDedupBytes   = 16 << 20
)

func (c Config) withDefaults() Config {
	if c.FragmentTimeout <= 0 {
		c.FragmentTimeout = 10 * time.Second
	}
	if c.MaxRecordBytes <= 0 {
		c.MaxRecordBytes = 8192
	}
	if c.MaxPendingPerSource <= 0 {
		c.MaxPendingPerSource = 16
	}
	if c.MaxPendingBytes <= 0 {
		c.MaxPendingBytes = DefaultMaxPendingBytes
	}
	if c.MaxDedupBytes <= 0 {
		c.MaxDedupBytes = DefaultMaxDedupBytes
	}
	if c.DedupWindow <= 0 {
		c.DedupWindow = 256
	}
	if c.MaxSources <= 0 {
		c.MaxSources = 100_000
	}
	return c
}

// Counters count what a Decoder did.
type Counters struct {
	Datagrams        uint64 // datagrams given to Decode
	NotAllowed       uint64 // datagrams dropped: their source is outside Config.Allowed
	Messages         uint64 // messages returned
	Duplicates       uint64 // messages dropped as already seen
	Malformed        uint64 // datagrams with nothing to decode (empty, a header without text)
	InvalidUTF8      uint64 // messages whose text had invalid UTF-8 (kept, repaired)
	Fragments        uint64 // fragments received
	Reassembled      uint64 // records completed from fragments
	FragmentsExpired uint64 // incomplete records dropped after FragmentTimeout
	FragmentsRefused uint64 // fragments refused: impossible offsets or lengths, or over a bound
	Joined           uint64 // basic lines continued from the previous datagram
}

// Decoder decodes datagrams. It is not safe for concurrent use.
type Decoder struct {
	cfg      Config
	counters Counters
	seed     maphash.Seed

	// seen maps a source address to its window of recent messages;
	// dedupBytes is what the windows hold (see MaxDedupBytes).
	seen       *simplelru.LRU[netip.Addr, *window]
	dedupBytes int

	// Records in reassembly: by source and sequence number, in arrival
	// order for expiry, with their count per source and bytes in all
	// (pendingBytes counts the waiting lines below too). A record leaves
	// the list the moment it is completed or dropped, so nothing that
	// waits keeps alive what came after it.
	pending      map[fragKey]*partial
	order        list.List // of *partial
	perSource    map[netip.Addr]int
	pendingBytes int

	// Basic lines cut short by the end of a datagram (netconsole sends at
	// most 1000 bytes a datagram, and a pr_cont line in pieces), by
	// source, waiting for the datagram that continues them; in arrival
	// order for expiry, each removed from the list when it is taken.
	tails     map[netip.Addr]*tail
	tailOrder list.List // of *tail
}

// tail is the unfinished last line of a source's basic datagram.
type tail struct {
	src  netip.AddrPort
	text []byte
	at   time.Time
	elem *list.Element // in tailOrder
}

// tailOverhead is what a waiting line costs beyond its text: the struct
// (96 bytes), its list element (48), its map entry (about 48 with the
// map's spare room), charged against MaxPendingBytes so that many tiny
// lines from many sources cannot grow without bound.
const tailOverhead = 192

// NewDecoder returns a Decoder bounded by cfg.
func NewDecoder(cfg Config) *Decoder {
	cfg = cfg.withDefaults()
	d := &Decoder{
		cfg:       cfg,
		seed:      maphash.MakeSeed(),
		pending:   map[fragKey]*partial{},
		perSource: map[netip.Addr]int{},
		tails:     map[netip.Addr]*tail{},
	}
	// NewLRU fails only for a size below 1, which withDefaults rules out.
	d.seen, _ = simplelru.NewLRU(cfg.MaxSources, func(_ netip.Addr, w *window) {
		d.dedupBytes -= w.cost()
	})
	return d
}

// Allows reports whether lines from addr are taken (see Config.Allowed).
func (d *Decoder) Allows(addr netip.Addr) bool {
	if len(d.cfg.Allowed) == 0 {
		return true
	}
	addr = addr.Unmap()
	for _, p := range d.cfg.Allowed {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}

// Counters returns what the decoder has done so far.
func (d *Decoder) Counters() Counters { return d.counters }

// Decode decodes one datagram from src received at received, and returns
// the messages it completes: none (a fragment, a duplicate, nothing
// decodable), one, or several (a basic datagram may hold several lines).
func (d *Decoder) Decode(src netip.AddrPort, payload []byte, received time.Time) []Message {
	d.counters.Datagrams++
	out := d.Expire(received)
	src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
	if !d.Allows(src.Addr()) {
		d.counters.NotAllowed++
		return out
	}
	payload = bytes.TrimRight(payload, "\x00")

	if h, body, ok := parseExtendedHeader(payload); ok {
		if h.fragTotal > 0 {
			body, ok = d.reassemble(src.Addr(), h, body, received)
			if !ok {
				return out
			}
		}
		m, ok := d.extendedMessage(src, h, body, received)
		if !ok {
			d.counters.Malformed++
			return out
		}
		return d.keep(out, m)
	}
	return append(out, d.basic(src, payload, received)...)
}

// basic decodes a basic datagram. A datagram that does not end with a
// newline leaves its last line unfinished: the next datagram from the
// source continues it, unless that one starts a new timestamped line (then
// the unfinished one is taken as it is). Expire takes the ones that wait
// too long.
func (d *Decoder) basic(src netip.AddrPort, payload []byte, received time.Time) []Message {
	var out []Message
	addr := src.Addr()
	if t := d.tails[addr]; t != nil {
		d.dropTail(addr)
		if startsWithUptime(payload) {
			out = d.emitBasic(out, t.src, t.text, t.at)
		} else {
			payload = append(t.text, payload...)
			received = t.at // the line began when its first part came
			d.counters.Joined++
		}
	}
	if len(bytes.TrimSpace(payload)) == 0 {
		d.counters.Malformed++
		return out
	}
	finished := bytes.HasSuffix(payload, []byte("\n"))
	lines := bytes.Split(bytes.TrimRight(payload, "\n"), []byte("\n"))
	if !finished {
		last := lines[len(lines)-1]
		lines = lines[:len(lines)-1]
		if len(last) < d.cfg.MaxRecordBytes && d.pendingBytes+len(last)+tailOverhead <= d.cfg.MaxPendingBytes {
			t := &tail{src: src, text: bytes.Clone(last), at: received}
			t.elem = d.tailOrder.PushBack(t)
			d.tails[addr] = t
			d.pendingBytes += tailCost(t)
		} else {
			lines = append(lines, last) // too long to wait for: take it as it is
		}
	}
	for _, line := range lines {
		out = d.emitBasic(out, src, line, received)
	}
	return out
}

// emitBasic decodes one basic line and appends it to out unless it is
// empty or a duplicate.
func (d *Decoder) emitBasic(out []Message, src netip.AddrPort, line []byte, received time.Time) []Message {
	if m, ok := d.basicMessage(src, line, received); ok {
		out = d.keep(out, m)
	}
	return out
}

// startsWithUptime reports whether a basic payload starts with a printk
// time: a new line, not the continuation of one.
func startsWithUptime(p []byte) bool {
	inner, _, ok := bracket(p)
	if !ok {
		return false
	}
	_, ok = parseUptime(inner)
	return ok
}

// dropTail forgets the source's waiting line (the caller uses its text).
func (d *Decoder) dropTail(addr netip.Addr) {
	if t := d.tails[addr]; t != nil {
		d.pendingBytes -= tailCost(t)
		d.tailOrder.Remove(t.elem)
		t.elem = nil
		delete(d.tails, addr)
	}
}

// tailCost is what a waiting line holds: its text's buffer and the rest.
func tailCost(t *tail) int { return cap(t.text) + tailOverhead }

// keep appends m to out unless it is a duplicate.
func (d *Decoder) keep(out []Message, m Message) []Message {
	if d.duplicate(m) {
		d.counters.Duplicates++
		return out
	}
	d.counters.Messages++
	return append(out, m)
}

// header is a parsed extended header.
type header struct {
	release            string
	prefix, seq        uint64
	usec               uint64
	flags              string
	caller             string
	fragOff, fragTotal int
}

// extendedScan is how far into a datagram the header's ';' may be: the
// same window the XDP program searches (HEADER_SCAN_LEN in
// bpf/lastgasp.h, room for netconsole's release prepend).
const extendedScan = 160

// parseExtendedHeader splits an extended record into header and body.
// A datagram that does not start with a well-formed header is not
// extended (it is a basic line, perhaps one starting with a digit).
func parseExtendedHeader(p []byte) (header, []byte, bool) {
	var h header
	if len(p) == 0 || p[0] < '0' || p[0] > '9' {
		return h, nil, false
	}
	end := bytes.IndexByte(p[:min(len(p), extendedScan)], ';')
	if end < 0 || bytes.IndexByte(p[:end], ' ') >= 0 {
		return h, nil, false
	}
	fields := strings.Split(string(p[:end]), ",")
	if len(fields) >= 5 && !isDigits(fields[0]) {
		h.release, fields = fields[0], fields[1:]
	}
	if len(fields) < 4 {
		return h, nil, false
	}
	var err1, err2, err3 error
	h.prefix, err1 = strconv.ParseUint(fields[0], 10, 32)
	h.seq, err2 = strconv.ParseUint(fields[1], 10, 64)
	h.usec, err3 = strconv.ParseUint(fields[2], 10, 64)
	if err1 != nil || err2 != nil || err3 != nil || fields[3] == "" {
		return h, nil, false
	}
	h.flags = fields[3]
	for _, f := range fields[4:] {
		k, v, _ := strings.Cut(f, "=")
		switch k {
		case "caller":
			h.caller = v
		case "ncfrag":
			off, total, ok := strings.Cut(v, "/")
			o, err1 := strconv.Atoi(off)
			t, err2 := strconv.Atoi(total)
			if !ok || err1 != nil || err2 != nil || t <= 0 || o < 0 {
				return h, nil, false
			}
			h.fragOff, h.fragTotal = o, t
		}
	}
	return h, p[end+1:], true
}

func isDigits(s string) bool {
	for i := range len(s) {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}

// extendedMessage builds a message from an extended record's body: the
// escaped text, a newline, then dictionary lines " KEY=value".
func (d *Decoder) extendedMessage(src netip.AddrPort, h header, body []byte, received time.Time) (Message, bool) {
	text, dict, _ := bytes.Cut(body, []byte("\n"))
	if len(text) == 0 && len(dict) == 0 {
		return Message{}, false
	}
	m := Message{
		Source:       src,
		Received:     received,
		Extended:     true,
		Level:        int(h.prefix & 7),
		Facility:     int(h.prefix >> 3),
		Seq:          h.seq,
		HasSeq:       true,
		Uptime:       time.Duration(h.usec) * time.Microsecond,
		HasUptime:    true,
		Continuation: strings.Contains(h.flags, "c"),
		Caller:       h.caller,
		Release:      h.release,
		Text:         d.validText(unescape(text)),
	}
	for _, line := range bytes.Split(dict, []byte("\n")) {
		kv, ok := bytes.CutPrefix(line, []byte(" "))
		if !ok {
			continue
		}
		k, v, ok := bytes.Cut(unescape(kv), []byte("="))
		if !ok || len(k) == 0 {
			continue
		}
		key, val := strings.ToValidUTF8(string(k), "\uFFFD"), strings.ToValidUTF8(string(v), "\uFFFD")
		switch key {
		case UserdataNode:
			m.Node = val
			continue
		case SysdataRelease:
			if m.Release == "" {
				m.Release = val
			}
			continue
		case SysdataMsgID:
			if id, err := strconv.ParseUint(val, 10, 32); err == nil {
				m.MsgID, m.HasMsgID = uint32(id), true
				continue
			}
		}
		if m.Dict == nil {
			m.Dict = map[string]string{}
		}
		m.Dict[key] = val
	}
	return m, true
}

// unescape undoes the kernel's escaping of extended records: every byte
// below ' ', from 127 up, and '\' itself is written \xNN. A '\' not
// followed by a valid escape is kept as it is.
func unescape(b []byte) []byte {
	if bytes.IndexByte(b, '\\') < 0 {
		return b
	}
	out := make([]byte, 0, len(b))
	for i := 0; i < len(b); i++ {
		if b[i] == '\\' && i+3 < len(b) && b[i+1] == 'x' {
			if v, err := strconv.ParseUint(string(b[i+2:i+4]), 16, 8); err == nil {
				out = append(out, byte(v))
				i += 3
				continue
			}
		}
		out = append(out, b[i])
	}
	return out
}

// basicMessage parses one line of a basic datagram: an optional printk
// time "[    3.053091]", an optional caller id "[  T114]", one space, the
// text. Brackets that hold neither are text.
func (d *Decoder) basicMessage(src netip.AddrPort, line []byte, received time.Time) (Message, bool) {
	line = bytes.TrimRight(line, "\r")
	if len(line) == 0 {
		return Message{}, false
	}
	m := Message{Source: src, Received: received, Level: -1, Facility: -1}
	rest := line
	if inner, after, ok := bracket(rest); ok {
		if up, ok := parseUptime(inner); ok {
			m.Uptime, m.HasUptime, rest = up, true, after
			if inner, after, ok := bracket(rest); ok && isCaller(inner) {
				m.Caller, rest = string(bytes.TrimSpace(inner)), after
			}
			rest = bytes.TrimPrefix(rest, []byte(" "))
		}
	}
	m.Text = d.validText(rest)
	return m, true
}

// bracket splits "[inner]after" when b starts with a '[' closed within 32
// bytes (the XDP program's BRACKET_MAX_LEN).
func bracket(b []byte) (inner, after []byte, ok bool) {
	if len(b) == 0 || b[0] != '[' {
		return nil, nil, false
	}
	end := bytes.IndexByte(b[:min(len(b), 32)], ']')
	if end < 0 {
		return nil, nil, false
	}
	return b[1:end], b[end+1:], true
}

// parseUptime parses the printk time "    3.053091" (seconds, then
// microseconds).
func parseUptime(b []byte) (time.Duration, bool) {
	sec, usec, ok := bytes.Cut(bytes.TrimSpace(b), []byte("."))
	if !ok || !isDigits(string(sec)) || len(usec) != 6 || !isDigits(string(usec)) {
		return 0, false
	}
	s, err1 := strconv.ParseUint(string(sec), 10, 32)
	u, err2 := strconv.ParseUint(string(usec), 10, 32)
	if err1 != nil || err2 != nil {
		return 0, false
	}
	return time.Duration(s)*time.Second + time.Duration(u)*time.Microsecond, true
}

// isCaller reports whether b is a printk caller id: "T<pid>" or "C<cpu>".
func isCaller(b []byte) bool {
	b = bytes.TrimSpace(b)
	return len(b) >= 2 && (b[0] == 'T' || b[0] == 'C') && isDigits(string(b[1:]))
}

// validText returns b as a string of valid UTF-8, counting repairs.
func (d *Decoder) validText(b []byte) string {
	if utf8.Valid(b) {
		return string(b)
	}
	d.counters.InvalidUTF8++
	return strings.ToValidUTF8(string(b), "\uFFFD")
}

// window remembers a source's recent messages, by hash, oldest first out.
// It grows as the source is heard, up to DedupWindow hashes, and is
// searched from end to end: 256 comparisons cost less than a map's
// memory (a map of 256 keys took 5 KiB a source).
type window struct {
	ring []uint64
	next int
}

// windowOverhead is what a window holds beyond its hashes: the struct (32
// bytes) and its LRU entry (list element, map slot: about 130).
const windowOverhead = 160

// cost is what the window holds.
func (w *window) cost() int { return cap(w.ring)*8 + windowOverhead }

// duplicate reports whether m was seen recently from its source, and
// remembers it. Messages are told apart by sequence number, kernel time
// and text; a basic line without a printk time cannot be told from a
// repeat of itself and is never called a duplicate.
func (d *Decoder) duplicate(m Message) bool {
	if !m.HasSeq && !m.HasUptime {
		return false
	}
	var h maphash.Hash
	h.SetSeed(d.seed)
	var num [16]byte
	putUint64(num[:8], m.Seq)
	putUint64(num[8:], uint64(m.Uptime))
	h.Write(num[:])
	h.WriteString(m.Text)
	key := h.Sum64()

	addr := m.Source.Addr()
	w, ok := d.seen.Get(addr)
	if !ok {
		w = &window{}
		d.seen.Add(addr, w) // may forget the least recent (the callback uncounts it)
		d.dedupBytes += w.cost()
	}
	if slices.Contains(w.ring, key) {
		return true
	}
	if len(w.ring) < d.cfg.DedupWindow {
		before := w.cost()
		w.ring = append(w.ring, key)
		d.dedupBytes += w.cost() - before
	} else {
		w.ring[w.next] = key
		w.next = (w.next + 1) % len(w.ring)
	}
	// Over the budget: the least recently heard go first (never this
	// source's, the most recent).
	for d.dedupBytes > d.cfg.MaxDedupBytes && d.seen.Len() > 1 {
		d.seen.RemoveOldest()
	}
	return false
}

func putUint64(b []byte, v uint64) {
	for i := range 8 {
		b[i] = byte(v >> (8 * i))
	}
}
