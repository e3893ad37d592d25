package loader

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf/link"
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
	// Mode is how it is attached: native or generic. For a pinned link
	// taken over from an earlier process, the mode it was attached with
	// is not known here and Mode is empty.
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
		a.Pinned = filepath.Join(p.cfg.PinPath, "link_"+ifname)
		if l, err := p.takeOver(a.Pinned); err != nil {
			return nil, fmt.Errorf("attach XDP to %s: %w", ifname, err)
		} else if l != nil {
			a.link = l
			p.log.Info("took over pinned XDP link", "interface", ifname, "pin", a.Pinned)
			p.attached = append(p.attached, a)
			return a, nil
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

// takeOver loads the link pinned at path, if there is one, and points it at
// this program. A pinned link whose interface is gone is removed.
func (p *Program) takeOver(path string) (link.Link, error) {
	l, err := link.LoadPinnedLink(path, nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("load pinned link %s: %w", path, err)
	}
	if err := l.Update(p.objs.LastgaspXdp); err != nil {
		p.log.Warn("pinned XDP link is defunct, attaching afresh", "pin", path, "error", err)
		if uerr := l.Unpin(); uerr != nil {
			l.Close()
			return nil, fmt.Errorf("unpin defunct link %s: %w", path, uerr)
		}
		l.Close()
		return nil, nil
	}
	return l, nil
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
