// Package bpf holds the XDP netconsole filter: its C source (lastgasp.c,
// with the contract shared with Go in lastgasp.h and the header parsers in
// parsing.h) and the Go bindings bpf2go generates from it, committed with
// the compiled object.
//
// The generated names start with Lastgasp: LoadLastgasp returns the
// collection spec, LastgaspRecord is the ring buffer record, and the C
// enums become Go constants (PATTERN_MAX_LEN and so on). Package loader
// turns the spec into a running program.
//
// One object serves every little-endian GOARCH, amd64 and arm64 among
// them (bpf2go's bpfel target): the program uses nothing specific to an
// architecture. Its headers' asm/ directory comes from linux-libc-dev's
// multiarch include directory, of an amd64 or an arm64 build host.
package bpf

//go:generate go tool bpf2go -tags linux -target bpfel -type record -type packet_counters -type pattern_key -type pattern_value -type burst_key -type burst -type shared_state -type first_bytes -type port_bits -type limits -type record_flags Lastgasp lastgasp.c -- -O2 -g -Wall -Werror -mcpu=v3 -I/usr/include/x86_64-linux-gnu -I/usr/include/aarch64-linux-gnu
