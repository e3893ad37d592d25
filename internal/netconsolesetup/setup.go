package netconsolesetup

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"

	"golang.org/x/sys/unix"
)

// DefaultDir is netconsole's configfs directory.
const DefaultDir = "/sys/kernel/config/netconsole"

// configRoot is where configfs is mounted.
const configRoot = "/sys/kernel/config"

// Prepare makes netconsole's configfs directory appear if it can: it
// mounts configfs at /sys/kernel/config if it is not mounted, and runs
// modprobe netconsole if the directory is still missing and modprobe
// exists. A module already loaded, or built in, needs neither. A dir other
// than DefaultDir (a stand-in) must exist already.
func Prepare(ctx context.Context, dir string) error {
	if exists(dir) {
		return nil
	}
	if dir != DefaultDir {
		return fmt.Errorf("no netconsole directory %s", dir)
	}
	mount := func() error {
		if !exists(configRoot) || onConfigfs(configRoot) {
			return nil
		}
		if err := unix.Mount("configfs", configRoot, "configfs", 0, ""); err != nil && !errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("mount configfs on %s: %w", configRoot, err)
		}
		return nil
	}
	if err := mount(); err != nil {
		return err
	}
	if exists(dir) {
		return nil
	}
	modprobe, err := exec.LookPath("modprobe")
	if err == nil {
		out, err := exec.CommandContext(ctx, modprobe, "netconsole").CombinedOutput()
		if err != nil {
			return fmt.Errorf("no netconsole: %s missing and modprobe netconsole failed: %w: %s", dir, err, trim(out))
		}
		if err := mount(); err != nil {
			return err
		}
	}
	if !exists(dir) {
		if !exists(configRoot) {
			return fmt.Errorf("no configfs: %s missing (kernel without CONFIG_CONFIGFS_FS, or its module not loaded)", configRoot)
		}
		return fmt.Errorf("no netconsole: %s missing (module netconsole not loaded, or a kernel without CONFIG_NETCONSOLE_DYNAMIC)", dir)
	}
	return nil
}

func trim(b []byte) string {
	s := string(b)
	for len(s) > 0 && (s[len(s)-1] == '\n' || s[len(s)-1] == ' ') {
		s = s[:len(s)-1]
	}
	return s
}

// Options are what Configure sets up.
type Options struct {
	// Collectors are the collectors' addresses, IPv4 or IPv6.
	Collectors []netip.Addr
	// Port is their netconsole port. Default DefaultPort.
	Port int
	// NodeName goes into each target's userdata (kernel 6.9+).
	NodeName string
	// Dir is netconsole's configfs directory. Default DefaultDir.
	Dir string
}

// Result is what Configure did.
type Result struct {
	// Targets are the targets of the collectors resolved, in the order
	// of Options.Collectors.
	Targets []Target
	// Changes are what Apply did to each target.
	Changes []Change
}

// Sources returns the distinct source addresses of the targets, in order.
func (r Result) Sources() []netip.Addr {
	var out []netip.Addr
	seen := map[netip.Addr]bool{}
	for _, t := range r.Targets {
		if !seen[t.Route.Source] {
			seen[t.Route.Source] = true
			out = append(out, t.Route.Source)
		}
	}
	return out
}

// Configure points netconsole at the collectors: it prepares configfs,
// resolves each collector's route, and applies the targets. A collector it
// cannot resolve is an error, but the others are still configured and its
// last target, if any, is kept.
func Configure(ctx context.Context, o Options) (Result, error) {
	if o.Dir == "" {
		o.Dir = DefaultDir
	}
	if o.Port == 0 {
		o.Port = DefaultPort
	}
	if len(o.Collectors) == 0 {
		return Result{}, errors.New("no collector named")
	}
	if err := Prepare(ctx, o.Dir); err != nil {
		return Result{}, err
	}
	var res Result
	var keep []string
	var joined []error
	seen := map[netip.Addr]bool{}
	for _, c := range o.Collectors {
		c = c.Unmap()
		if seen[c] {
			continue
		}
		seen[c] = true
		route, err := Resolve(ctx, c)
		if err != nil {
			joined = append(joined, err)
			keep = append(keep, TargetName(c))
			continue
		}
		res.Targets = append(res.Targets, Target{Collector: c, Port: o.Port, Route: route})
	}
	changes, err := Configfs{Dir: o.Dir, NodeName: o.NodeName}.Apply(res.Targets, keep)
	res.Changes = changes
	if err != nil {
		joined = append(joined, err)
	}
	return res, errors.Join(joined...)
}
