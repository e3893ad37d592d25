package loader

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"unsafe"

	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// XDPMode is how the program is attached to an interface.
type XDPMode string

// The attach modes.
const (
	// ModeNative runs the program in the driver, before any skb exists:
	// the fast path, the one lastgasp is built for.
	ModeNative XDPMode = "native"
	// ModeGeneric runs it after the skb is built: slower, works anywhere.
	ModeGeneric XDPMode = "generic"
	// ModeAuto tries native and falls back to generic, saying so.
	ModeAuto XDPMode = "auto"
)

// ParseXDPMode checks a mode given by name.
func ParseXDPMode(s string) (XDPMode, error) {
	switch m := XDPMode(s); m {
	case ModeNative, ModeGeneric, ModeAuto:
		return m, nil
	}
	return "", fmt.Errorf("XDP mode %q: want native, generic or auto", s)
}

// Attachment is the program attached to one interface.
type Attachment struct {
	// Interface is the interface's name.
	Interface string
	// Mode is how it is attached: native or generic, as the kernel
	// reports it for a pinned link taken over from an earlier process.
	Mode XDPMode
	// Pinned is the bpffs path of the link, if it is pinned.
	Pinned string

	link link.Link
}

// Attach attaches the program to the named interface. With a pin path, a
// link pinned there for this interface by an earlier process is taken over
// (its program swapped for this one atomically, so no packet goes
// unfiltered); otherwise the new link is pinned.
func (p *Program) Attach(ifname string, mode XDPMode) (*Attachment, error) {
	iface, err := net.InterfaceByName(ifname)
	if err != nil {
		return nil, fmt.Errorf("attach XDP to %s: %w", ifname, err)
	}
	a := &Attachment{Interface: ifname}
	if p.cfg.PinPath != "" {
		a.Pinned = filepath.Join(p.cfg.PinPath, linkPrefix+ifname)
		l, err := p.takeOver(a.Pinned)
		if err != nil {
			return nil, fmt.Errorf("attach XDP to %s: %w", ifname, err)
		}
		if l != nil {
			a.link = l
			if a.Mode, err = attachedMode(iface.Index); err != nil {
				l.Close()
				return nil, fmt.Errorf("attach XDP to %s: %w", ifname, err)
			}
			if mode == ModeAuto || mode == "" || mode == a.Mode {
				p.log.Info("took over pinned XDP link", "interface", ifname, "pin", a.Pinned, "mode", a.Mode)
				p.attached = append(p.attached, a)
				return a, nil
			}
			// Another mode than asked for (a collector restarted with
			// another --xdp-mode): a program cannot be attached in a
			// second mode beside it, so the old link goes first. Until
			// the new one is attached, a few milliseconds, the stack
			// sees the netconsole lines (the backstop socket's).
			p.log.Warn("pinned XDP link in another mode than asked: detaching it to attach afresh",
				"interface", ifname, "pin", a.Pinned, "mode", a.Mode, "want", mode)
			if err := a.Detach(); err != nil {
				return nil, fmt.Errorf("attach XDP to %s: %w", ifname, err)
			}
			a.Mode = ""
		}
	}

	a.link, a.Mode, err = p.attachMode(iface.Index, mode)
	if err != nil {
		return nil, fmt.Errorf("attach XDP to %s: %w", ifname, err)
	}
	if a.Pinned != "" {
		if err := a.link.Pin(a.Pinned); err != nil {
			a.link.Close()
			return nil, fmt.Errorf("attach XDP to %s: pin link: %w", ifname, err)
		}
	}
	p.log.Info("attached XDP program", "interface", ifname, "mode", a.Mode, "pinned", a.Pinned != "")
	p.attached = append(p.attached, a)
	return a, nil
}

// linkPrefix starts the name of a link pinned under the pin path; the
// interface's name follows.
const linkPrefix = "link_"

// takeOver loads the link pinned at path, if there is one, and points it
// at this program. A dead link (its interface gone: ENOLINK) is unpinned,
// to be attached afresh. Any other error of the update leaves the link
// pinned and its program attached: it may be live, and running the old
// program is better than running none.
func (p *Program) takeOver(path string) (link.Link, error) {
	l, err := link.LoadPinnedLink(path, nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("load pinned link %s: %w", path, err)
	}
	err = l.Update(p.objs.LastgaspXdp)
	if err == nil {
		return l, nil
	}
	if !errors.Is(err, unix.ENOLINK) {
		l.Close() // the pin holds it: it stays attached
		return nil, fmt.Errorf("update pinned link %s (left as it is): %w", path, err)
	}
	p.log.Warn("pinned XDP link is defunct, attaching afresh", "pin", path, "error", err)
	if uerr := l.Unpin(); uerr != nil {
		l.Close()
		return nil, fmt.Errorf("unpin defunct link %s: %w", path, uerr)
	}
	l.Close()
	return nil, nil
}

// enum XDP_ATTACHED_* in linux/if_link.h, as IFLA_XDP_ATTACHED reports.
const (
	xdpAttachedDrv = 1
	xdpAttachedSKB = 2
)

// attachedMode asks the kernel (rtnetlink, IFLA_XDP_ATTACHED) how the XDP
// program on an interface is attached.
func attachedMode(ifindex int) (XDPMode, error) {
	rib, err := syscall.NetlinkRIB(unix.RTM_GETLINK, unix.AF_UNSPEC)
	if err != nil {
		return "", fmt.Errorf("XDP attach mode: %w", err)
	}
	msgs, err := syscall.ParseNetlinkMessage(rib)
	if err != nil {
		return "", fmt.Errorf("XDP attach mode: %w", err)
	}
	for i := range msgs {
		m := &msgs[i]
		if m.Header.Type != unix.RTM_NEWLINK || len(m.Data) < unix.SizeofIfInfomsg {
			continue
		}
		info := (*unix.IfInfomsg)(unsafe.Pointer(&m.Data[0]))
		if int(info.Index) != ifindex {
			continue
		}
		attrs, err := syscall.ParseNetlinkRouteAttr(m)
		if err != nil {
			return "", fmt.Errorf("XDP attach mode: %w", err)
		}
		for _, a := range attrs {
			if a.Attr.Type&^unix.NLA_F_NESTED != unix.IFLA_XDP {
				continue
			}
			// Nested attributes: length, type, value, padded to 4.
			for b := a.Value; len(b) >= 4; {
				n, typ := int(binary.NativeEndian.Uint16(b)), binary.NativeEndian.Uint16(b[2:])
				if n < 4 || n > len(b) {
					break
				}
				if typ == unix.IFLA_XDP_ATTACHED && n >= 5 {
					switch b[4] {
					case xdpAttachedDrv:
						return ModeNative, nil
					case xdpAttachedSKB:
						return ModeGeneric, nil
					}
					return "", fmt.Errorf("XDP attach mode %d on interface %d: neither native nor generic", b[4], ifindex)
				}
				b = b[min((n+3)&^3, len(b)):]
			}
		}
		return "", fmt.Errorf("XDP attach mode: no XDP program on interface %d", ifindex)
	}
	return "", fmt.Errorf("XDP attach mode: no interface %d", ifindex)
}

// DetachStale detaches and unpins the links pinned under the pin path for
// interfaces this Program has not attached to: those of an interface no
// longer configured. Call it once every configured interface is
// attached. It returns the interfaces detached.
func (p *Program) DetachStale() ([]string, error) {
	if p.cfg.PinPath == "" {
		return nil, nil
	}
	entries, err := os.ReadDir(p.cfg.PinPath)
	if err != nil {
		return nil, fmt.Errorf("detach stale links: %w", err)
	}
	ours := map[string]bool{}
	for _, a := range p.attached {
		ours[a.Interface] = true
	}
	var gone []string
	var errs []error
	for _, e := range entries {
		ifname, ok := strings.CutPrefix(e.Name(), linkPrefix)
		if !ok || ours[ifname] {
			continue
		}
		path := filepath.Join(p.cfg.PinPath, e.Name())
		l, err := link.LoadPinnedLink(path, nil)
		if err != nil {
			errs = append(errs, fmt.Errorf("load pinned link %s: %w", path, err))
			continue
		}
		err = l.Unpin()
		l.Close() // the last reference: the program is detached
		if err != nil {
			errs = append(errs, fmt.Errorf("unpin %s: %w", path, err))
			continue
		}
		p.log.Info("detached the XDP program from an interface no longer configured", "interface", ifname, "pin", path)
		gone = append(gone, ifname)
	}
	if err := errors.Join(errs...); err != nil {
		return gone, fmt.Errorf("detach stale links: %w", err)
	}
	return gone, nil
}

// attachMode attaches in the requested mode, falling back from native to
// generic in ModeAuto.
func (p *Program) attachMode(ifindex int, mode XDPMode) (link.Link, XDPMode, error) {
	flags := map[XDPMode]link.XDPAttachFlags{
		ModeNative:  link.XDPDriverMode,
		ModeGeneric: link.XDPGenericMode,
	}
	try := []XDPMode{mode}
	if mode == ModeAuto || mode == "" {
		try = []XDPMode{ModeNative, ModeGeneric}
	}
	var errs []error
	for _, m := range try {
		l, err := link.AttachXDP(link.XDPOptions{
			Program:   p.objs.LastgaspXdp,
			Interface: ifindex,
			Flags:     flags[m],
		})
		if err == nil {
			return l, m, nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", m, err))
		if m == ModeNative && len(try) > 1 {
			p.log.Warn("native XDP not available, falling back to generic", "ifindex", ifindex, "error", err)
		}
	}
	return nil, "", errors.Join(errs...)
}

// Close releases the link. A pinned link stays attached (for the next
// process to take over); an unpinned one is detached.
func (a *Attachment) Close() error {
	if a.link == nil {
		return nil
	}
	err := a.link.Close()
	a.link = nil
	if err != nil {
		return fmt.Errorf("close XDP link on %s: %w", a.Interface, err)
	}
	return nil
}

// Detach removes the program from the interface, pinned or not.
func (a *Attachment) Detach() error {
	if a.link == nil {
		return nil
	}
	if a.Pinned != "" {
		if err := a.link.Unpin(); err != nil {
			return fmt.Errorf("detach XDP from %s: unpin: %w", a.Interface, err)
		}
	}
	return a.Close()
}
