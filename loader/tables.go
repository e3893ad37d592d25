package loader

import (
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"slices"

	"github.com/cilium/ebpf"

	"github.com/lastgasp/lastgasp/bpf"
	"github.com/lastgasp/lastgasp/internal/pattern"
)

// SetPorts makes ports the program's netconsole ports, at run time: the
// table (a bitmap of every port, struct port_bits) is written with the old
// and the new ports first, then with the new ones alone, so a port kept in
// both sets is never missing.
func (p *Program) SetPorts(ports []uint16) error {
	if len(ports) == 0 {
		return errors.New("set ports: no port given")
	}
	if max := int(bpf.LastgaspLimitsPORTS_MAX); len(ports) > max {
		return fmt.Errorf("set ports: %d ports, at most %d allowed", len(ports), max)
	}
	for _, port := range ports {
		if port == 0 {
			return errors.New("set ports: port 0 is not a port")
		}
	}
	var want, both bpf.LastgaspPortBits
	for _, port := range ports {
		want.Bits[port/64] |= 1 << (port % 64)
	}
	if err := p.objs.Ports.Lookup(uint32(0), &both); err != nil {
		return fmt.Errorf("set ports: read the table: %w", err)
	}
	for i := range both.Bits {
		both.Bits[i] |= want.Bits[i]
	}
	for _, bits := range []*bpf.LastgaspPortBits{&both, &want} {
		if err := p.objs.Ports.Put(uint32(0), bits); err != nil {
			return fmt.Errorf("set ports: %w", err)
		}
	}
	return nil
}

// SetLocalAddresses makes addrs the program's table of this host's
// addresses (used with Config.LocalOnly), at run time. An address both in
// the table and in addrs is neither written nor removed, so a datagram to
// it is judged throughout. The addresses only in addrs are added, and
// those only in the table removed: added first when the table (hash map
// local_addrs, LOCAL_ADDRS_MAX entries) holds both sets at once, removed
// first when it does not, so the order never makes it fail. An address
// removed is one the host no longer has; while it is in the table a
// datagram to it is judged, once out of it passed up the stack unjudged
// (XDP_PASS, counted in not_local: addressed_here in bpf/lastgasp.c),
// never dropped. More addresses than the table holds (once the same
// address given twice, or IPv4 also as IPv4-mapped IPv6, is counted once)
// is an error, and the table is left as it was.
func (p *Program) SetLocalAddresses(addrs []netip.Addr) error {
	want := make(map[bpf.LastgaspBurstKey]bool, len(addrs))
	var add []bpf.LastgaspBurstKey // in addrs' order, once each
	for _, a := range addrs {
		k := bpf.LastgaspBurstKey{Addr: a.Unmap().As16()}
		if !want[k] {
			want[k] = true
			add = append(add, k)
		}
	}
	max := int(bpf.LastgaspLimitsLOCAL_ADDRS_MAX)
	if len(want) > max {
		return fmt.Errorf("set local addresses: %d addresses, at most %d allowed: the table is left as it was", len(want), max)
	}
	table := p.objs.LocalAddrs
	have := make(map[bpf.LastgaspBurstKey]bool)
	var stale []bpf.LastgaspBurstKey
	var k bpf.LastgaspBurstKey
	var unused uint8
	iter := table.Iterate()
	for iter.Next(&k, &unused) {
		have[k] = true
		if !want[k] {
			stale = append(stale, k)
		}
	}
	if err := iter.Err(); err != nil {
		return fmt.Errorf("set local addresses: list the table: %w", err)
	}
	add = slices.DeleteFunc(add, func(k bpf.LastgaspBurstKey) bool { return have[k] })

	addNew := func() error {
		for _, k := range add {
			if err := table.Put(k, uint8(1)); err != nil {
				return fmt.Errorf("set local addresses: add %v: %w", netip.AddrFrom16(k.Addr).Unmap(), err)
			}
		}
		return nil
	}
	removeStale := func() error {
		for _, k := range stale {
			if err := table.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				return fmt.Errorf("set local addresses: remove %v: %w", netip.AddrFrom16(k.Addr).Unmap(), err)
			}
		}
		return nil
	}
	steps := []func() error{addNew, removeStale}
	if len(have)+len(add) > max {
		steps = []func() error{removeStale, addNew}
	}
	for _, step := range steps {
		if err := step(); err != nil {
			return err
		}
	}
	return nil
}

// SetPatterns makes t the program's pattern table, at run time, without
// reloading. The old table's patterns that t drops are deleted first (so
// the trie, of PATTERNS_MAX entries, never has to hold both tables), then
// t's are written; a pattern kept in both tables is never deleted, so it
// never stops matching. The first-byte bitmap (struct first_bytes) holds
// the bytes of both tables while the trie changes, and t's alone after.
func (p *Program) SetPatterns(t *pattern.Table) error {
	want := make(map[bpf.LastgaspPatternKey]bool)
	var bits, both bpf.LastgaspFirstBytes
	for _, pat := range t.Patterns() {
		want[patternKey(pat.Prefix)] = true
		setBit(&bits, pat.Prefix[0])
	}
	both = bits
	var stale []bpf.LastgaspPatternKey
	var key bpf.LastgaspPatternKey
	var value bpf.LastgaspPatternValue
	iter := p.objs.Patterns.Iterate()
	for iter.Next(&key, &value) {
		if key.Prefixlen > 0 {
			setBit(&both, key.Data[0])
		}
		if !want[key] {
			stale = append(stale, key)
		}
	}
	if err := iter.Err(); err != nil {
		return fmt.Errorf("set patterns: list: %w", err)
	}
	if err := p.objs.PatternFirstBytes.Put(uint32(0), both); err != nil {
		return fmt.Errorf("set patterns: first bytes: %w", err)
	}
	for _, key := range stale {
		if err := p.objs.Patterns.Delete(key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("set patterns: remove a pattern: %w", err)
		}
	}
	for _, pat := range t.Patterns() {
		if err := p.objs.Patterns.Put(patternKey(pat.Prefix), bpf.LastgaspPatternValue{Id: pat.ID}); err != nil {
			return fmt.Errorf("set patterns: add %q: %w", pat.Prefix, err)
		}
	}
	if err := p.objs.PatternFirstBytes.Put(uint32(0), bits); err != nil {
		return fmt.Errorf("set patterns: first bytes: %w", err)
	}
	p.cfg.Patterns = t
	return nil
}

// setBit sets byte c's bit in b.
func setBit(b *bpf.LastgaspFirstBytes, c byte) { b.Bits[c/64] |= 1 << (c % 64) }

// patternKey is the LPM trie key of a prefix: its bytes and its length in
// bits. pattern.NewTable has checked that it fits.
func patternKey(prefix string) bpf.LastgaspPatternKey {
	var key bpf.LastgaspPatternKey
	key.Prefixlen = uint32(8 * copy(key.Data[:], prefix))
	return key
}

// Counters are the program's packet counters, summed over all CPUs. See
// struct packet_counters in bpf/lastgasp.h for what each one counts.
type Counters = bpf.LastgaspPacketCounters

// Counters reads the program's counters, summed over all CPUs.
func (p *Program) Counters() (Counters, error) {
	var perCPU []Counters
	if err := p.objs.Counters.Lookup(uint32(0), &perCPU); err != nil {
		return Counters{}, fmt.Errorf("read counters: %w", err)
	}
	var sum Counters
	total := reflect.ValueOf(&sum).Elem()
	for _, cpu := range perCPU {
		v := reflect.ValueOf(cpu)
		for i := range v.NumField() {
			if f := total.Field(i); f.Kind() == reflect.Uint64 {
				f.SetUint(f.Uint() + v.Field(i).Uint())
			}
		}
	}
	return sum, nil
}

// CounterValues lists the counters by name (the C field names), in the
// order of the struct, for metrics and logs.
func CounterValues(c Counters) []NamedCounter {
	v := reflect.ValueOf(c)
	t := v.Type()
	var out []NamedCounter
	for i := range v.NumField() {
		if v.Field(i).Kind() != reflect.Uint64 {
			continue
		}
		name := t.Field(i).Name
		out = append(out, NamedCounter{Name: snake(name), Value: v.Field(i).Uint()})
	}
	return out
}

// NamedCounter is one counter and its value.
type NamedCounter struct {
	Name  string // as in bpf/lastgasp.h: "packets", "ringbuf_full", ...
	Value uint64
}

// snake turns bpf2go's Go field name back into the C one: RingbufFull ->
// ringbuf_full.
func snake(name string) string {
	var out []byte
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c >= 'A' && c <= 'Z' {
			if i > 0 {
				out = append(out, '_')
			}
			c += 'a' - 'A'
		}
		out = append(out, c)
	}
	return string(out)
}
