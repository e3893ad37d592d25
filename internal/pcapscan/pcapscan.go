// Package pcapscan runs captured packets through the real XDP program, with
// BPF_PROG_TEST_RUN, and collects the lines it forwards: the offline twin of
// a live collector, and the proof that the kernel program does on a capture
// what it would do on the wire.
//
// pcap and pcapng files are read with gopacket's pcapgo. Ethernet captures
// go to the program as they are; Linux cooked (SLL, SLL2) and raw IP
// captures get an Ethernet header first.
package pcapscan

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/cilium/ebpf"
	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"

	"github.com/lastgasp/lastgasp/internal/filter"
	"github.com/lastgasp/lastgasp/loader"
	"github.com/lastgasp/lastgasp/ringbuf"
)

// minFrame is the shortest input BPF_PROG_TEST_RUN takes for XDP: an
// Ethernet header.
const minFrame = 14

// Stats counts what a scan read.
type Stats struct {
	Packets   int // frames run through the program
	Skipped   int // frames the program could not be given (too short, unknown link type)
	Forwarded int // lines the program forwarded
}

// Scanner holds a loaded (never attached) XDP program and its ring buffer.
type Scanner struct {
	prog *loader.Program
	rd   *ringbuf.Reader
}

// New loads the XDP program with cfg for scanning. cfg.PinPath is ignored:
// a scan never touches a running collector's maps.
func New(cfg loader.Config) (*Scanner, error) {
	cfg.PinPath = ""
	prog, err := loader.Load(cfg)
	if err != nil {
		return nil, err
	}
	rd, err := ringbuf.NewReader(prog.Events())
	if err != nil {
		prog.Close()
		return nil, err
	}
	return &Scanner{prog: prog, rd: rd}, nil
}

// Program returns the loaded program (for its counters and tables).
func (s *Scanner) Program() *loader.Program { return s.prog }

// Close releases the program.
func (s *Scanner) Close() error {
	return errors.Join(s.rd.Close(), s.prog.Close())
}

// Frame runs one Ethernet frame received at time at through the program,
// and calls fn with each line it forwarded (zero or one), stamped at.
// It returns the program's verdict.
func (s *Scanner) Frame(frame []byte, at time.Time, fn func(filter.Line)) (uint32, error) {
	verdict, err := s.prog.XDP().Run(&ebpf.RunOptions{Data: frame})
	if err != nil {
		return 0, fmt.Errorf("run XDP program on a %d-byte frame: %w", len(frame), err)
	}
	stamp := func(uint64) time.Time { return at }
	if _, err := s.rd.ReadWaiting(stamp, fn); err != nil {
		return verdict, err
	}
	return verdict, nil
}

// File scans a pcap or pcapng file, calling fn with each forwarded line in
// capture order. On a truncated or corrupt file it returns what it read so
// far together with the error.
func (s *Scanner) File(path string, fn func(filter.Line)) (Stats, error) {
	var st Stats
	f, err := os.Open(path)
	if err != nil {
		return st, fmt.Errorf("scan: %w", err)
	}
	defer f.Close()

	src, err := openCapture(bufio.NewReader(f))
	if err != nil {
		return st, fmt.Errorf("scan %s: %w", path, err)
	}
	count := func(l filter.Line) { st.Forwarded++; fn(l) }
	for {
		data, ci, err := src.read()
		if errors.Is(err, io.EOF) {
			return st, nil
		}
		if err != nil {
			return st, fmt.Errorf("scan %s: after %d packets: %w", path, st.Packets+st.Skipped, err)
		}
		frame, ok := toEthernet(src.linkType(ci), data)
		if !ok || len(frame) < minFrame {
			st.Skipped++
			continue
		}
		if _, err := s.Frame(frame, ci.Timestamp, count); err != nil {
			return st, fmt.Errorf("scan %s: packet %d: %w", path, st.Packets+st.Skipped+1, err)
		}
		st.Packets++
	}
}

// capture reads packets from a pcap or pcapng stream.
type capture struct {
	read     func() ([]byte, gopacket.CaptureInfo, error)
	linkType func(gopacket.CaptureInfo) layers.LinkType
}

// pcapngMagic starts a pcapng file (its Section Header Block type).
var pcapngMagic = []byte{0x0a, 0x0d, 0x0d, 0x0a}

// openCapture recognises the file's format by its first bytes.
func openCapture(r *bufio.Reader) (*capture, error) {
	head, err := r.Peek(4)
	if err != nil {
		return nil, fmt.Errorf("not a pcap or pcapng file: only %d bytes long", len(head))
	}
	if bytes.Equal(head, pcapngMagic) {
		ng, err := pcapgo.NewNgReader(r, pcapgo.DefaultNgReaderOptions)
		if err != nil {
			return nil, fmt.Errorf("not a pcapng file: %w", err)
		}
		return &capture{
			read: ng.ReadPacketData,
			linkType: func(ci gopacket.CaptureInfo) layers.LinkType {
				intf, err := ng.Interface(ci.InterfaceIndex)
				if err != nil {
					return layers.LinkTypeNull
				}
				return intf.LinkType
			},
		}, nil
	}
	pr, err := pcapgo.NewReader(r)
	if err != nil {
		return nil, fmt.Errorf("not a pcap or pcapng file: %w", err)
	}
	return &capture{
		read:     pr.ReadPacketData,
		linkType: func(gopacket.CaptureInfo) layers.LinkType { return pr.LinkType() },
	}, nil
}

// Link types not named by gopacket's layers package.
const (
	linkTypeLinuxSLL2 layers.LinkType = 276
)

// toEthernet returns data as an Ethernet frame, adding an Ethernet header
// for link types without one. ok is false for link types it cannot convert.
func toEthernet(lt layers.LinkType, data []byte) (frame []byte, ok bool) {
	switch lt {
	case layers.LinkTypeEthernet:
		return data, true
	case layers.LinkTypeLinuxSLL:
		// 16 bytes: packet type, ARPHRD type, address length, address
		// (8 bytes), protocol.
		if len(data) < 16 {
			return nil, false
		}
		return withEthernet(binary.BigEndian.Uint16(data[14:16]), data[16:]), true
	case linkTypeLinuxSLL2:
		// 20 bytes: protocol first, then interface, ARPHRD, addresses.
		if len(data) < 20 {
			return nil, false
		}
		return withEthernet(binary.BigEndian.Uint16(data[0:2]), data[20:]), true
	case layers.LinkTypeRaw, layers.LinkTypeIPv4, layers.LinkTypeIPv6:
		if len(data) == 0 {
			return nil, false
		}
		switch data[0] >> 4 {
		case 4:
			return withEthernet(uint16(layers.EthernetTypeIPv4), data), true
		case 6:
			return withEthernet(uint16(layers.EthernetTypeIPv6), data), true
		}
	}
	return nil, false
}

// withEthernet prefixes payload with an Ethernet header of the given
// EtherType and zero addresses.
func withEthernet(etherType uint16, payload []byte) []byte {
	frame := make([]byte, 14+len(payload))
	binary.BigEndian.PutUint16(frame[12:14], etherType)
	copy(frame[14:], payload)
	return frame
}
