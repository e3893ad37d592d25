package netconsole

import (
	"container/list"
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
	first  time.Time     // when its first fragment arrived
	body   []byte        // the record's body, total bytes long
	filled []uint64      // which bytes of body have arrived, a bit each
	have   int           // how many of them
	elem   *list.Element // in Decoder.order
}

// partialOverhead is what a record in reassembly holds beyond its buffers:
// the struct (120 bytes), its list element (48), its map entries (pending
// and perSource, about 100 with the maps' spare room).
const partialOverhead = 272

// partialCost is what a record of total bytes holds while reassembled:
// its body, its bitmap of bytes arrived, and the rest.
func partialCost(total int) int { return total + (total+63)/64*8 + partialOverhead }

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
		if d.perSource[addr] >= d.cfg.MaxPendingPerSource || d.pendingBytes+partialCost(total) > d.cfg.MaxPendingBytes {
			d.counters.FragmentsRefused++
			return nil, false
		}
		p = &partial{key: key, first: now, body: make([]byte, total), filled: make([]uint64, (total+63)/64)}
		p.elem = d.order.PushBack(p)
		d.pending[key] = p
		d.perSource[addr]++
		d.pendingBytes += partialCost(total)
	}
	if len(p.body) != total {
		d.counters.FragmentsRefused++
		return nil, false
	}
	copy(p.body[off:], chunk)
	for i := off; i < off+len(chunk); i++ {
		if w, bit := i/64, uint64(1)<<(i%64); p.filled[w]&bit == 0 {
			p.filled[w] |= bit
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

// forget drops a record from reassembly, and from the expiry list: nothing
// of it stays.
func (d *Decoder) forget(p *partial) {
	d.order.Remove(p.elem)
	delete(d.pending, p.key)
	d.pendingBytes -= partialCost(len(p.body))
	p.body, p.filled, p.elem = nil, nil, nil
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
	for e := d.order.Front(); e != nil; e = d.order.Front() {
		p := e.Value.(*partial)
		if now.Sub(p.first) < d.cfg.FragmentTimeout {
			break
		}
		d.forget(p)
		d.counters.FragmentsExpired++
	}

	return d.takeTails(func(t *tail) bool { return now.Sub(t.at) >= d.cfg.FragmentTimeout })
}

// Flush returns every unfinished basic line as it is: the end of the
// input.
func (d *Decoder) Flush() []Message {
	return d.takeTails(func(*tail) bool { return true })
}

// takeTails decodes, as they are, the unfinished lines that are due,
// oldest first, stopping at the first that is not (the list is in arrival
// order, and holds only lines still waiting).
func (d *Decoder) takeTails(due func(*tail) bool) []Message {
	var out []Message
	for e := d.tailOrder.Front(); e != nil; e = d.tailOrder.Front() {
		t := e.Value.(*tail)
		if !due(t) {
			break
		}
		d.dropTail(t.src.Addr())
		out = d.emitBasic(out, t.src, t.text, t.at)
	}
	return out
}
