// Package localaddr lists this host's addresses, as the kernel has them in
// the network namespace it is opened in, and follows their changes: the
// XDP program judges only netconsole datagrams addressed to the host
// (loader.Config.LocalOnly), and this is how its table of local addresses
// is filled and kept current.
//
// It speaks rtnetlink itself (golang.org/x/sys/unix): a socket subscribed
// to the kernel's address events, and a dump of the address list on every
// event. Both sockets belong to the namespace of the thread that opens
// them, so a Watcher opened inside a namespace follows that namespace's
// addresses from any goroutine.
package localaddr

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Refresh is how often Run dumps the address list even without an event:
// a backstop for events lost to a full socket buffer (ENOBUFS also
// triggers a dump at once).
const Refresh = 30 * time.Second

// pollInterval bounds how long Run takes to notice its context is done.
const pollInterval = 200 * time.Millisecond

// Watcher lists the host's addresses and follows their changes.
type Watcher struct {
	events int // subscribed to RTMGRP_IPV4_IFADDR and RTMGRP_IPV6_IFADDR
	dump   int // for RTM_GETADDR dumps
	seq    uint32
}

// Open opens a Watcher in the calling thread's network namespace.
func Open() (*Watcher, error) {
	events, err := netlinkSocket(unix.RTMGRP_IPV4_IFADDR | unix.RTMGRP_IPV6_IFADDR)
	if err != nil {
		return nil, fmt.Errorf("open address events: %w", err)
	}
	dump, err := netlinkSocket(0)
	if err != nil {
		unix.Close(events)
		return nil, fmt.Errorf("open address dump: %w", err)
	}
	tv := unix.NsecToTimeval(pollInterval.Nanoseconds())
	if err := unix.SetsockoptTimeval(events, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(events)
		unix.Close(dump)
		return nil, fmt.Errorf("open address events: receive timeout: %w", err)
	}
	return &Watcher{events: events, dump: dump}, nil
}

func netlinkSocket(groups uint32) (int, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return -1, fmt.Errorf("netlink socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: groups}); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("bind netlink socket: %w", err)
	}
	return fd, nil
}

// Addrs returns the host's addresses now: every interface's addresses,
// and its IPv4 broadcast addresses, sorted, without duplicates.
func (w *Watcher) Addrs() ([]netip.Addr, error) {
	w.seq++
	req := make([]byte, unix.NLMSG_HDRLEN+unix.SizeofIfAddrmsg)
	hdr := (*unix.NlMsghdr)(unsafe.Pointer(&req[0]))
	hdr.Len = uint32(len(req))
	hdr.Type = unix.RTM_GETADDR
	hdr.Flags = unix.NLM_F_REQUEST | unix.NLM_F_DUMP
	hdr.Seq = w.seq
	req[unix.NLMSG_HDRLEN] = unix.AF_UNSPEC
	if err := unix.Sendto(w.dump, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, fmt.Errorf("list addresses: %w", err)
	}
	var addrs []netip.Addr
	buf := make([]byte, 1<<16)
	for {
		n, _, err := unix.Recvfrom(w.dump, buf, 0)
		if err != nil {
			return nil, fmt.Errorf("list addresses: %w", err)
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return nil, fmt.Errorf("list addresses: %w", err)
		}
		for _, m := range msgs {
			if m.Header.Seq != w.seq {
				continue
			}
			switch m.Header.Type {
			case unix.NLMSG_DONE:
				slices.SortFunc(addrs, netip.Addr.Compare)
				return slices.Compact(addrs), nil
			case unix.NLMSG_ERROR:
				return nil, errors.New("list addresses: the kernel answered with an error")
			case unix.RTM_NEWADDR:
				addrs = append(addrs, addresses(&m)...)
			}
		}
	}
}

// addresses returns the addresses of one RTM_NEWADDR message: the local
// address (IFA_LOCAL; IFA_ADDRESS where there is none, as for IPv6) and
// the broadcast address.
func addresses(m *syscall.NetlinkMessage) []netip.Addr {
	attrs, err := syscall.ParseNetlinkRouteAttr(m)
	if err != nil {
		return nil
	}
	var local, address, out []netip.Addr
	for _, a := range attrs {
		addr, ok := netip.AddrFromSlice(a.Value)
		if !ok {
			continue
		}
		switch a.Attr.Type {
		case unix.IFA_LOCAL:
			local = append(local, addr)
		case unix.IFA_ADDRESS:
			address = append(address, addr)
		case unix.IFA_BROADCAST:
			out = append(out, addr)
		}
	}
	if len(local) == 0 {
		local = address
	}
	return append(out, local...)
}

// Run calls update with the host's addresses whenever they may have
// changed (an address event, or every Refresh), until ctx is done. It
// returns nil then, or the first error of a dump. update's error is its
// caller's to log: Run goes on.
func (w *Watcher) Run(ctx context.Context, update func([]netip.Addr)) error {
	buf := make([]byte, 1<<16)
	next := time.Now().Add(Refresh)
	for ctx.Err() == nil {
		_, _, err := unix.Recvfrom(w.events, buf, 0)
		changed := err == nil || errors.Is(err, unix.ENOBUFS) || !time.Now().Before(next)
		if err != nil && !errors.Is(err, unix.EAGAIN) && !errors.Is(err, unix.EINTR) && !errors.Is(err, unix.ENOBUFS) {
			return fmt.Errorf("watch addresses: %w", err)
		}
		if !changed {
			continue
		}
		// Drain what else is queued: one dump answers them all.
		for {
			if _, _, err := unix.Recvfrom(w.events, buf, unix.MSG_DONTWAIT); err != nil {
				break
			}
		}
		addrs, err := w.Addrs()
		if err != nil {
			return err
		}
		update(addrs)
		next = time.Now().Add(Refresh)
	}
	return nil
}

// Close closes the Watcher's sockets; call it once Run has returned.
func (w *Watcher) Close() error {
	return errors.Join(unix.Close(w.events), unix.Close(w.dump))
}
