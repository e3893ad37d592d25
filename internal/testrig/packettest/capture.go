package packettest

import (
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/gopacket/gopacket/pcapgo"
)

// Captured is one frame of a capture file.
type Captured struct {
	Frame []byte
	Time  time.Time
}

// ReadCapture returns every frame of a pcap file.
func ReadCapture(path string) ([]Captured, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read capture: %w", err)
	}
	defer f.Close()
	r, err := pcapgo.NewReader(f)
	if err != nil {
		return nil, fmt.Errorf("read capture %s: %w", path, err)
	}
	var frames []Captured
	for {
		data, ci, err := r.ReadPacketData()
		if errors.Is(err, io.EOF) {
			return frames, nil
		}
		if err != nil {
			return frames, fmt.Errorf("read capture %s: %w", path, err)
		}
		frames = append(frames, Captured{Frame: data, Time: ci.Timestamp})
	}
}

// UDPPayload returns the UDP payload of a frame of the shared captures
// (Ethernet, IPv4 without options, UDP), bounded by the UDP length.
func UDPPayload(frame []byte) []byte {
	const udp = 14 + 20
	if len(frame) < udp+8 {
		return nil
	}
	n := int(frame[udp+4])<<8 | int(frame[udp+5])
	if n < 8 || udp+n > len(frame) {
		return nil
	}
	return frame[udp+8 : udp+n]
}
