package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"

	"github.com/lastgasp/lastgasp/internal/collector"
	"github.com/lastgasp/lastgasp/internal/filter"
	"github.com/lastgasp/lastgasp/internal/localaddr"
	"github.com/lastgasp/lastgasp/internal/metrics"
	"github.com/lastgasp/lastgasp/internal/pattern"
	"github.com/lastgasp/lastgasp/internal/udpreceiver"
	"github.com/lastgasp/lastgasp/loader"
	"github.com/lastgasp/lastgasp/ringbuf"
)

// dataPath is where forwarded lines come from: the XDP program's ring
// buffer (xdp mode), UDP sockets (socket mode, or xdp mode's backstop),
// or both. It is a collector.Source.
type dataPath struct {
	xdp     *xdpPath // nil in socket mode
	sockets *sockets // nil in xdp mode without a backstop
}

// openDataPath opens the data path the flags ask for. In xdp mode with
// --forward drop it also opens the backstop sockets: the program passes up
// what it cannot put in the ring buffer (full) or cannot judge (IP
// fragments), and nothing else of the netconsole ports, so they see no
// line twice.
func openDataPath(ctx context.Context, c runConfig, table *pattern.Table, log *slog.Logger) (*dataPath, error) {
	if c.mode == "socket" {
		s, err := openSockets(ctx, c, table, false)
		if err != nil {
			return nil, err
		}
		return &dataPath{sockets: s}, nil
	}
	x, err := openXDP(c, table, log)
	if err != nil {
		return nil, err
	}
	dp := &dataPath{xdp: x}
	if c.backstop && !c.forwardPass {
		if dp.sockets, err = openSockets(ctx, c, table, true); err != nil {
			x.Close()
			return nil, fmt.Errorf("backstop socket (--backstop=false to go without): %w", err)
		}
	}
	return dp, nil
}

// Run reads every part until ctx is done.
func (dp *dataPath) Run(ctx context.Context, emit func(filter.Line)) error {
	var parts collector.Sources
	if dp.xdp != nil {
		parts = append(parts, dp.xdp)
	}
	if dp.sockets != nil {
		for _, rx := range dp.sockets.rx {
			parts = append(parts, rx)
		}
	}
	return parts.Run(ctx, emit)
}

// SetPatterns gives every part a new pattern table. The kernel first: if
// it refuses, it keeps the table in use and the sockets never change.
func (dp *dataPath) SetPatterns(t *pattern.Table) error {
	if dp.xdp != nil {
		if err := dp.xdp.SetPatterns(t); err != nil {
			return err
		}
	}
	if dp.sockets != nil {
		dp.sockets.SetPatterns(t)
	}
	return nil
}

// metricSources names the counters a scrape reads from the data path.
func (dp *dataPath) metricSources() metrics.DataPath {
	var m metrics.DataPath
	if dp.xdp != nil {
		m.XDP = dp.xdp.Counters
		m.RingMalformed = dp.xdp.rd.Malformed
	}
	if dp.sockets != nil {
		m.Sockets = dp.sockets.Counters
	}
	return m
}

// Close stops and releases every part (a pinned program stays attached).
func (dp *dataPath) Close() {
	if dp.sockets != nil {
		dp.sockets.Close()
	}
	if dp.xdp != nil {
		dp.xdp.Close()
	}
}

// sockets are UDP receivers, one a netconsole port, each with its filter
// (the Go twin of the kernel's match-and-burst decision).
type sockets struct {
	rx      []*udpreceiver.Receiver
	filters []*filter.Filter
}

// openSockets listens on every port at --listen; forwardAll for the
// backstop, whose lines the kernel program has judged already.
func openSockets(ctx context.Context, c runConfig, table *pattern.Table, forwardAll bool) (*sockets, error) {
	s := &sockets{}
	for _, port := range c.ports {
		f := filter.New(filter.Config{Patterns: table, ContextLines: c.contextLines, NoContext: c.contextLines == 0, ForwardAll: forwardAll})
		rx, err := udpreceiver.Listen(ctx, net.JoinHostPort(c.listen, strconv.Itoa(int(port))), c.socketBuffer, f)
		if err != nil {
			s.Close()
			return nil, err
		}
		s.rx, s.filters = append(s.rx, rx), append(s.filters, f)
	}
	return s, nil
}

// SetPatterns gives every socket's filter a new table.
func (s *sockets) SetPatterns(t *pattern.Table) {
	for _, f := range s.filters {
		f.SetPatterns(t)
	}
}

// Counters sums the sockets' counters.
func (s *sockets) Counters() udpreceiver.Counters {
	var sum udpreceiver.Counters
	for _, rx := range s.rx {
		c := rx.Counters()
		sum.Datagrams += c.Datagrams
		sum.Matched += c.Matched
		sum.Context += c.Context
		sum.Truncated += c.Truncated
		sum.Drops += c.Drops
		sum.Reads += c.Reads
	}
	return sum
}

// Close closes every socket.
func (s *sockets) Close() {
	for _, rx := range s.rx {
		rx.Close()
	}
}

// xdpPath is the XDP program attached to the interfaces, the reader of
// its ring buffer, and the watcher that keeps its table of this host's
// addresses current.
type xdpPath struct {
	prog  *loader.Program
	rd    *ringbuf.Reader
	addrs *localaddr.Watcher
	log   *slog.Logger
}

// openXDP loads the program (or takes over a pinned one), attaches it to
// every interface, and opens its ring buffer.
func openXDP(c runConfig, table *pattern.Table, log *slog.Logger) (*xdpPath, error) {
	prog, err := loader.Load(loader.Config{
		Ports:        c.ports,
		Patterns:     table,
		ContextLines: uint32(c.contextLines),
		NoContext:    c.contextLines == 0,
		ForwardPass:  c.forwardPass,
		RingBufSize:  c.ringBytes,
		PinPath:      c.pinPath,
		LocalOnly:    true,
		Logger:       log,
	})
	if err != nil {
		return nil, err
	}
	// This host's addresses, before any packet is judged: datagrams to
	// port 6666 of other addresses (routed through this host) pass.
	w, err := localaddr.Open()
	if err != nil {
		prog.Close()
		return nil, err
	}
	addrs, err := w.Addrs()
	if err == nil {
		err = prog.SetLocalAddresses(addrs)
	}
	if err != nil {
		w.Close()
		prog.Close()
		return nil, err
	}
	for _, ifname := range c.interfaces {
		if _, err := prog.Attach(ifname, c.xdpMode); err != nil {
			w.Close()
			prog.Close()
			return nil, err
		}
	}
	// Links pinned by an earlier run for interfaces no longer configured
	// would go on filtering there, unread, for ever.
	if _, err := prog.DetachStale(); err != nil {
		log.Warn("links pinned for interfaces no longer configured not all detached", "error", err)
	}
	rd, err := ringbuf.NewReader(prog.Events())
	if err != nil {
		w.Close()
		prog.Close()
		return nil, err
	}
	return &xdpPath{prog: prog, rd: rd, addrs: w, log: log}, nil
}

// Run reads the ring buffer, and follows this host's addresses into the
// program's table, until ctx is done.
func (x *xdpPath) Run(ctx context.Context, emit func(filter.Line)) error {
	wctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		err := x.addrs.Run(wctx, func(addrs []netip.Addr) {
			if err := x.prog.SetLocalAddresses(addrs); err != nil {
				x.log.Error("local address table not updated: datagrams to a new address pass unjudged", "error", err)
			}
		})
		if err != nil {
			x.log.Error("local addresses no longer followed: datagrams to a new address pass unjudged", "error", err)
		}
	}()
	err := x.rd.Run(ctx, emit)
	stop()
	<-done
	return err
}

// SetPatterns gives the kernel program a new table; if it refuses, the
// table in use is put back.
func (x *xdpPath) SetPatterns(t *pattern.Table) error {
	if err := x.prog.SetPatterns(t); err != nil {
		if rerr := x.prog.SetPatterns(x.prog.Config().Patterns); rerr != nil {
			return errors.Join(err, fmt.Errorf("restoring the table in use: %w", rerr))
		}
		return err
	}
	return nil
}

// Counters reads the program's per-CPU counters, summed.
func (x *xdpPath) Counters() (loader.Counters, error) { return x.prog.Counters() }

// Close closes the reader and the program.
func (x *xdpPath) Close() {
	x.rd.Close()
	x.addrs.Close()
	x.prog.Close()
}
