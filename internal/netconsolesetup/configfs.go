package netconsolesetup

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/lastgasp/lastgasp/internal/netconsole"
)

// TargetPrefix starts the name of every target this package makes; it
// removes no other.
const TargetPrefix = "lastgasp-"

// DefaultPort is the collectors' netconsole port.
const DefaultPort = 6666

// Target is one collector's netconsole target, as it should be.
type Target struct {
	// Collector is the collector's address, the target's remote_ip.
	Collector netip.Addr
	// Port is the collector's UDP port, remote_port.
	Port int
	// Route is how to reach it: dev_name, local_ip, remote_mac.
	Route Route
}

// Name is the target's configfs directory name: TargetPrefix and the
// collector's address (":" written "_").
func (t Target) Name() string { return TargetName(t.Collector) }

// TargetName is the configfs directory name of the target for collector.
func TargetName(collector netip.Addr) string {
	return TargetPrefix + strings.ReplaceAll(collector.Unmap().String(), ":", "_")
}

// Action is what Apply did to one target.
type Action string

// The actions.
const (
	Created      Action = "created"
	Reconfigured Action = "reconfigured"
	Unchanged    Action = "unchanged"
	Removed      Action = "removed"
)

// Change is one target's outcome.
type Change struct {
	// Name is the target's directory name.
	Name string
	// Action is what was done.
	Action Action
}

// configfsMagic is configfs's statfs f_type (CONFIGFS_MAGIC).
const configfsMagic = 0x62656570

// Configfs is the netconsole directory of configfs.
type Configfs struct {
	// Dir is the netconsole directory, normally DefaultDir. A plain
	// directory may stand in for it (tests on hosts without netconsole):
	// files are written as configfs would take them.
	Dir string
	// NodeName, if set, goes into each target's userdata as "node" where
	// the kernel has userdata (6.9 and later).
	NodeName string
}

// attr is one attribute written to a target, and how its current value
// is compared with the wanted one.
type attr struct {
	name, value string
	same        func(have, want string) bool
}

func sameString(have, want string) bool { return have == want }

func sameAddr(have, want string) bool {
	a, err1 := netip.ParseAddr(have)
	b, err2 := netip.ParseAddr(want)
	return err1 == nil && err2 == nil && a.Unmap() == b.Unmap()
}

func sameMAC(have, want string) bool {
	a, err1 := net.ParseMAC(have)
	b, err2 := net.ParseMAC(want)
	return err1 == nil && err2 == nil && a.String() == b.String()
}

// attrs are t's attributes in the order they are written: extended before
// release (the kernel takes release only in the extended format), the
// addresses before enabled.
func (c Configfs) attrs(dir string, t Target) []attr {
	as := []attr{
		{"extended", "1", sameString},
		{"dev_name", t.Route.Device, sameString},
		{"local_ip", t.Route.Source.String(), sameAddr},
		{"remote_ip", t.Collector.Unmap().String(), sameAddr},
		{"remote_port", strconv.Itoa(t.Port), sameString},
		{"remote_mac", t.Route.NextHopMAC.String(), sameMAC},
	}
	// sysdata (6.17+): the message id (lost messages show as gaps) and
	// the kernel release, in userdata/. Before it, 6.5+ had "release"
	// in the target itself.
	if exists(filepath.Join(dir, "userdata", "release_enabled")) {
		as = append(as, attr{"userdata/release_enabled", "1", sameString})
	} else if exists(filepath.Join(dir, "release")) {
		as = append(as, attr{"release", "1", sameString})
	}
	if exists(filepath.Join(dir, "userdata", "msgid_enabled")) {
		as = append(as, attr{"userdata/msgid_enabled", "1", sameString})
	}
	return as
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

func read(path string) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(data))
}

func write(dir, name, value string) error {
	if err := os.WriteFile(filepath.Join(dir, name), []byte(value+"\n"), 0o644); err != nil {
		return fmt.Errorf("netconsole target %s: set %s to %q: %w", filepath.Base(dir), name, value, err)
	}
	return nil
}

// Apply makes the targets say what they should, and removes the targets
// of this package's making whose collectors are not in targets, except
// those named in keep (collectors that could not be resolved now keep
// their last good target). It returns what it did to each, in order.
func (c Configfs) Apply(targets []Target, keep []string) ([]Change, error) {
	var changes []Change
	want := map[string]bool{}
	for _, name := range keep {
		want[name] = true
	}
	var errs []error
	for _, t := range targets {
		want[t.Name()] = true
		action, err := c.apply(t)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		changes = append(changes, Change{Name: t.Name(), Action: action})
	}
	entries, err := os.ReadDir(c.Dir)
	if err != nil {
		return changes, errors.Join(append(errs, fmt.Errorf("netconsole: %w", err))...)
	}
	for _, e := range entries {
		if !e.IsDir() || !strings.HasPrefix(e.Name(), TargetPrefix) || want[e.Name()] {
			continue
		}
		if err := c.remove(filepath.Join(c.Dir, e.Name())); err != nil {
			errs = append(errs, err)
			continue
		}
		changes = append(changes, Change{Name: e.Name(), Action: Removed})
	}
	return changes, errors.Join(errs...)
}

// apply makes one target say what it should.
func (c Configfs) apply(t Target) (Action, error) {
	dir := filepath.Join(c.Dir, t.Name())
	action := Reconfigured
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		if err := os.Mkdir(dir, 0o755); err != nil {
			return "", fmt.Errorf("netconsole: make target %s: %w", t.Name(), err)
		}
		action = Created
	} else if err != nil {
		return "", fmt.Errorf("netconsole: target %s: %w", t.Name(), err)
	}
	as := c.attrs(dir, t)
	userdata := c.NodeName != "" && exists(filepath.Join(dir, "userdata"))
	if action == Reconfigured && read(filepath.Join(dir, "enabled")) == "1" &&
		!c.differs(dir, as) && (!userdata || read(filepath.Join(dir, "userdata", netconsole.UserdataNode, "value")) == c.NodeName) {
		return Unchanged, nil
	}
	// The kernel takes new addresses only on a disabled target.
	if action == Reconfigured {
		if err := write(dir, "enabled", "0"); err != nil {
			return "", err
		}
	}
	for _, a := range as {
		if err := write(dir, a.name, a.value); err != nil {
			return "", err
		}
	}
	if userdata {
		// The key the collector's decoder reads the Node name from.
		node := filepath.Join("userdata", netconsole.UserdataNode)
		if err := os.Mkdir(filepath.Join(dir, node), 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			return "", fmt.Errorf("netconsole target %s: userdata: %w", t.Name(), err)
		}
		if err := write(dir, filepath.Join(node, "value"), c.NodeName); err != nil {
			return "", err
		}
	}
	if err := write(dir, "enabled", "1"); err != nil {
		return "", err
	}
	return action, nil
}

// differs reports whether any attribute of the target in dir is not what
// as wants.
func (c Configfs) differs(dir string, as []attr) bool {
	return slices.ContainsFunc(as, func(a attr) bool {
		return !a.same(read(filepath.Join(dir, a.name)), a.value)
	})
}

// remove deletes a target: its userdata entries first (configfs removes
// no group that has children), then the target itself, which the kernel
// disables as it goes.
func (c Configfs) remove(dir string) error {
	if ents, err := os.ReadDir(filepath.Join(dir, "userdata")); err == nil {
		for _, e := range ents {
			if e.IsDir() {
				os.Remove(filepath.Join(dir, "userdata", e.Name()))
			}
		}
	}
	err := os.Remove(dir)
	if err != nil && !onConfigfs(dir) {
		// A plain directory standing in for configfs holds its
		// attribute files.
		err = os.RemoveAll(dir)
	}
	if err != nil {
		return fmt.Errorf("netconsole: remove target %s: %w", filepath.Base(dir), err)
	}
	return nil
}

func onConfigfs(path string) bool {
	var st unix.Statfs_t
	return unix.Statfs(path, &st) == nil && st.Type == configfsMagic
}
