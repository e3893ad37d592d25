// Package bench holds lastgasp's benchmarks; it has no code outside its
// tests.
//
// xdp_test.go measures the XDP program in the kernel with
// BPF_PROG_TEST_RUN: one sub-benchmark per path a packet can take (not
// netconsole, an ordinary line in each format, a matching line, a context
// line, a matching line that finds the ring buffer full). Each reports
// ns/pkt, the kernel's own mean time per run, the figure to read. Its
// ns/op is the wall time per run seen from Go: the same runs plus what each
// BPF_PROG_TEST_RUN call costs outside the kernel's timer (about a
// millisecond), which is negligible except in the cases that forward every
// packet and so must make a call per ring buffer's worth of runs.
//
// userspace_test.go measures the Go code on the collector's path: the
// pattern matcher, the socket path's filter and the ring buffer record
// decoder, in ns/op and lines/s.
//
// receivers_test.go (BenchmarkReceivers) floods each receiver (lastgasp's
// XDP path and three socket receivers) with the in-kernel traffic
// generator of internal/testrig/trafficgen, a real panic inside the flood,
// and reports the rate offered, the lines lost and the panic lines
// received.
//
// flood_test.go (BenchmarkFlood, make bench-flood) is issue 16's scenario 1:
// every receiver at stepped offered rates with 20 panics a row from
// distinct sources, written to results/flood.json, flood.md and plots.
// sources_test.go (BenchmarkSources, make bench-sources) is scenario 2:
// the XDP program's cost per packet as the LRU of bursts fills, 1 to
// 100,000 sources, IPv4 and IPv6, written to results/sources.json.
// Scenarios 3 and 4 run the whole daemon, so they live beside its tests in
// cmd/lastgasp (scenarios_test.go): BenchmarkDaemonCleanup (make
// bench-cleanup, results/cleanup.json) and BenchmarkDaemonRestart (make
// bench-restart, results/restart.json).
//
// Run them as root (loading an XDP program needs CAP_BPF and
// CAP_NET_ADMIN):
//
//	go test -run '^$' -bench . -benchmem -count 5 ./bench/
//
// README.md records the figures, the exact commands, the machine and the
// caveats.
package bench
