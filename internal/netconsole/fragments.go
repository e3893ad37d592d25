package netconsole

import (
	"net/netip"
	"time"
)

// fragKey names a record in reassembly.
type fragKey struct {
	addr netip.Addr
	seq  uint64
}

// partial is a record in reassembly.
type partial struct {
	key    fragKey
	first  time.Time // when its first fragment arrived
	body   []byte    // the record's body, total bytes long
	filled []bool    // which bytes of body have arrived
	have   int       // how many of them
	done   bool      // completed or dropped: skip it in order
}

// reassemble adds one fragment (h.fragOff, h.fragTotal, chunk) to its
// record, and returns the whole body once every byte of it has arrived.
// Fragments that cannot be part of a real record are refused and counted:
// a total over MaxRecordBytes, an offset or chunk outside the total, a
// total that disagrees with earlier fragments', a source or the decoder
// over its bound.
func (d *Decoder) reassemble(addr netip.Addr, h header, chunk []byte, now time.Time) ([]byte, bool) {
	d.counters.Fragments++
	total, off := h.fragTotal, h.fragOff
	if total > d.cfg.MaxRecordBytes || off >= total || len(chunk) == 0 || off+len(chunk) > total {
		d.counters.FragmentsRefused++
		return nil, false
	}
	key := fragKey{addr: addr, seq: h.seq}
	p := d.pending[key]
	if p == nil {
		if d.perSource[addr] >= d.cfg.MaxPendingPerSource || d.pendingBytes+total > d.cfg.MaxPendingBytes {
			d.counters.FragmentsRefused++
			return nil, false
		}
		p = &partial{key: key, first: now, body: make([]byte, total), filled: make([]bool, total)}
		d.pending[key] = p
		d.order = append(d.order, p)
		d.perSource[addr]++
		d.pendingBytes += total
	}
	if len(p.body) != total {
		d.counters.FragmentsRefused++
		return nil, false
	}
	copy(p.body[off:], chunk)
	for i := off; i < off+len(chunk); i++ {
		if !p.filled[i] {
			p.filled[i] = true
			p.have++
		}
	}
	if p.have < total {
		return nil, false
	}
	body := p.body
	d.forget(p)
	d.counters.Reassembled++
	return body, true
}

// forget drops a record from reassembly. Its buffers are released at once:
// the expiry list may hold the record a while longer.
func (d *Decoder) forget(p *partial) {
	p.done = true
	delete(d.pending, p.key)
	d.pendingBytes -= len(p.body)
	p.body, p.filled = nil, nil
	if d.perSource[p.key.addr]--; d.perSource[p.key.addr] <= 0 {
		delete(d.perSource, p.key.addr)
	}
}

// Expire drops records whose fragments have not all arrived within
// FragmentTimeout of now, and returns the unfinished basic lines that
// waited that long for their continuation, as they are. Decode calls it
// with each datagram's time (and keeps what it returns); a caller with no
// traffic should call it now and then.
func (d *Decoder) Expire(now time.Time) []Message {
	i := 0
	for ; i < len(d.order); i++ {
		p := d.order[i]
		if p.done {
			continue
		}
		if now.Sub(p.first) < d.cfg.FragmentTimeout {
			break
		}
		d.forget(p)
		d.counters.FragmentsExpired++
	}
	d.order = d.order[i:]

	return d.takeTails(func(t *tail) bool { return now.Sub(t.at) >= d.cfg.FragmentTimeout })
}

// Flush returns every unfinished basic line as it is: the end of the
// input.
func (d *Decoder) Flush() []Message {
	return d.takeTails(func(*tail) bool { return true })
}

// takeTails decodes, as they are, the unfinished lines that are due,
// oldest first, stopping at the first that is not (the list is in arrival
// order); those continued or replaced since are skipped.
func (d *Decoder) takeTails(due func(*tail) bool) []Message {
	var out []Message
	j := 0
	for ; j < len(d.tailOrder); j++ {
		t := d.tailOrder[j]
		if t.done {
			continue
		}
		if !due(t) {
			break
		}
		d.dropTail(t.src.Addr())
		out = d.emitBasic(out, t.src, t.text, t.at)
	}
	d.tailOrder = d.tailOrder[j:]
	return out
}
