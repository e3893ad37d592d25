// Package kernelrig is lastgasp's real-kernel test rig: Debian's kernel,
// booted under qemu (TCG, no KVM needed) with a busybox initramfs, made to
// fail on demand by a small out-of-tree module (crashmod), while every UDP
// datagram its netconsole sends is captured into a pcap file on the
// collector's side of a tap device.
//
// A run, one Scenario:
//
//   - Build compiles crashmod against Debian's linux-headers, compiles
//     memhog (the OOM mode's static allocator) and packs the initramfs
//     (busybox, the NIC's and netconsole's modules, crashmod, memhog and
//     the /init script of this directory) into a cache directory outside
//     the work tree, keyed by a hash of every input: it is rebuilt only
//     when one of them changes.
//   - Run creates a network namespace holding a tap device with the
//     collector's addresses (10.99.0.1/24, fd00:99::1/64), starts qemu in
//     it with the guest's virtio-net NIC on the tap, captures the UDP
//     datagrams the guest sends (an AF_PACKET socket inside the namespace,
//     written with gopacket's pcapgo, Ethernet link type), and keeps the
//     serial console. The kernel is booted with panic=1 and qemu with
//     -no-reboot, so a panic ends the run a second after it is printed
//     (panic=-1 would end it at once, but then qemu exits before it has
//     sent the guest's last datagrams: the panic line itself was lost in
//     some runs); a guest that survives powers itself off after "lg-done:
//     guest still alive"; a Timeout ends any other. The namespace, the
//     tap and qemu are gone when Run returns.
//
// The guest's side (kernelrig/init) reads what to do from lg.* parameters
// of the kernel command line: see that script.
//
// Everything here needs root (namespaces, tap devices, AF_PACKET), qemu
// (qemu-system-x86), the kernel (linux-image-6.1.0-56-amd64 and its
// headers), busybox-static, gcc with a static libc (build-essential) and
// make. A Rig whose Release is KernelRelease612 boots Debian's 6.12
// instead (linux-image-6.12.107+deb12-amd64-unsigned and xz-utils; with
// NoCrashmod, since Debian has no headers of it here). Catalog lists the
// recorded scenarios; cmd/record records them into testdata/kernel.
package kernelrig

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
	"golang.org/x/sys/unix"

	"github.com/lastgasp/lastgasp/internal/testrig/testnet"
)

// KernelRelease is the Debian kernel the rig boots and builds crashmod
// for (packages linux-image-6.1.0-56-amd64 and linux-headers-6.1.0-56-amd64).
const KernelRelease = "6.1.0-56-amd64"

// KernelRelease612 is the newer Debian kernel a Rig boots when its Release
// says so (package linux-image-6.12.107+deb12-amd64-unsigned, no headers:
// no crashmod), the first here with netconsole userdata (6.9+). Its
// modules are xz-compressed and virtio-pci is built in.
const KernelRelease612 = "6.12.107+deb12-amd64"

// Defaults for a Rig's zero fields.
const (
	// DefaultCacheDir holds the built module and initramfs, one
	// subdirectory per hash of their inputs.
	DefaultCacheDir = "/var/cache/lastgasp/kernelrig"
	// DefaultKernel is the kernel image booted.
	DefaultKernel = "/boot/vmlinuz-" + KernelRelease
	// DefaultModules is the kernel's module tree, whose "build" is the
	// headers crashmod is built against.
	DefaultModules = "/lib/modules/" + KernelRelease
	// DefaultBusybox is the static busybox (package busybox-static).
	DefaultBusybox = "/bin/busybox"
	// DefaultQEMU is the emulator (package qemu-system-x86).
	DefaultQEMU = "qemu-system-x86_64"
)

// The guest's and the collector's netconsole endpoints.
var (
	// NodeIPv4 and NodeIPv6 are the guest's addresses, its netconsole's
	// source.
	NodeIPv4, NodeIPv6 = "10.99.0.2", "fd00:99::2"
	// CollectorIPv4 and CollectorIPv6 are the tap's addresses in the
	// rig's namespace, netconsole's target.
	CollectorIPv4, CollectorIPv6 = "10.99.0.1", "fd00:99::1"
)

// The netconsole ports: the guest sends from NodePort to CollectorPort.
const (
	NodePort      = 6665
	CollectorPort = 6666
)

// tapName is the tap device's name inside the rig's namespace (each run
// has a namespace of its own, so the name never clashes).
const tapName = "lgtap0"

// guestMAC is the guest NIC's address.
const guestMAC = "52:54:00:12:34:56"

// modules are the kernel modules the initramfs carries, in the order
// /init loads them (modules.dep's dependency order). A kernel may have
// them as name.ko.xz (decompressed into the initramfs: busybox insmod
// hands the kernel the bytes it reads) or built in (modules.builtin: left
// out, /init skips what is absent).
var modules = []string{
	"kernel/drivers/virtio/virtio_ring.ko",
	"kernel/drivers/virtio/virtio.ko",
	"kernel/drivers/virtio/virtio_pci_legacy_dev.ko",
	"kernel/drivers/virtio/virtio_pci_modern_dev.ko",
	"kernel/drivers/virtio/virtio_pci.ko",
	"kernel/net/core/failover.ko",
	"kernel/drivers/net/net_failover.ko",
	"kernel/drivers/net/virtio_net.ko",
	"kernel/fs/configfs/configfs.ko",
	"kernel/drivers/net/netconsole.ko",
}

// Rig runs scenarios. Its zero value uses the defaults above and the
// source directory this file was compiled from.
type Rig struct {
	// Release is the kernel release booted: the defaults of Kernel and
	// Modules follow it. Default KernelRelease.
	Release string
	// NoCrashmod builds no crashmod, for a kernel without headers: only
	// the modes none, sysrq, oom and script work.
	NoCrashmod bool
	// SourceDir is the kernelrig directory of the repository (crashmod/,
	// memhog/, init). Default: this file's directory.
	SourceDir string
	// CacheDir is where built artifacts are kept. Default
	// DefaultCacheDir.
	CacheDir string
	// Kernel is the kernel image to boot. Default /boot/vmlinuz-RELEASE
	// (DefaultKernel).
	Kernel string
	// Modules is the kernel's module directory. Default
	// /lib/modules/RELEASE (DefaultModules).
	Modules string
	// Busybox is a static busybox binary. Default DefaultBusybox.
	Busybox string
	// QEMU is the emulator's name or path. Default DefaultQEMU.
	QEMU string
	// Log, if set, receives progress lines (builds, runs).
	Log func(format string, args ...any)
	// Collector, if set, is called once a run's namespace and tap exist,
	// before the guest boots: the live demo starts lastgasp there,
	// attached to the tap (ifname), the guest's netconsole target. An
	// error ends the run. What it starts is its own to stop; the
	// namespace lives on while a process is in it.
	Collector func(ns *testnet.Netns, ifname string) error

	buildMu sync.Mutex
	built   *Artifacts
}

func (r *Rig) sourceDir() string {
	if r.SourceDir != "" {
		return r.SourceDir
	}
	_, file, _, _ := runtime.Caller(0)
	return filepath.Dir(file)
}

func (r *Rig) release() string { return orDefault(r.Release, KernelRelease) }

func (r *Rig) kernel() string { return orDefault(r.Kernel, "/boot/vmlinuz-"+r.release()) }

func (r *Rig) moduleDir() string { return orDefault(r.Modules, "/lib/modules/"+r.release()) }

// modulePath returns where the kernel has module m (a path of modules,
// ".ko"): as is, compressed (".ko.xz"), or "" when it is built in. An
// error says it has neither.
func (r *Rig) modulePath(m string) (string, error) {
	mods := r.moduleDir()
	for _, p := range []string{m, m + ".xz"} {
		if _, err := os.Stat(filepath.Join(mods, p)); err == nil {
			return filepath.Join(mods, p), nil
		}
	}
	builtin, _ := os.ReadFile(filepath.Join(mods, "modules.builtin"))
	for _, line := range strings.Split(string(builtin), "\n") {
		if line == m {
			return "", nil
		}
	}
	return "", fmt.Errorf("kernelrig: module %s: not in %s", m, mods)
}

// readModule returns a module's bytes, decompressed if it is ".ko.xz".
func readModule(ctx context.Context, path string) ([]byte, error) {
	if !strings.HasSuffix(path, ".xz") {
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("kernelrig: initramfs: %w", err)
		}
		return data, nil
	}
	out, err := exec.CommandContext(ctx, "xz", "-dc", path).Output()
	if err != nil {
		return nil, fmt.Errorf("kernelrig: initramfs: xz -dc %s: %w", path, err)
	}
	return out, nil
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func (r *Rig) logf(format string, args ...any) {
	if r.Log != nil {
		r.Log(format, args...)
	}
}

// Missing returns why the rig cannot run on this machine (not root, no
// qemu, no kernel image, no headers, no busybox, no gcc), or "" if it can.
func (r *Rig) Missing() string {
	if os.Geteuid() != 0 {
		return "needs root (network namespaces, tap devices, AF_PACKET)"
	}
	var missing []string
	tools := []string{orDefault(r.QEMU, DefaultQEMU), "ip", "make", "gcc"}
	if r.release() != KernelRelease {
		tools = append(tools, "xz")
	}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	mods := r.moduleDir()
	files := []string{r.kernel(), orDefault(r.Busybox, DefaultBusybox), "/dev/net/tun"}
	if !r.NoCrashmod {
		files = append(files, filepath.Join(mods, "build", "Makefile"))
	}
	for _, f := range files {
		if _, err := os.Stat(f); err != nil {
			missing = append(missing, f)
		}
	}
	if _, err := r.modulePath(modules[len(modules)-1]); err != nil {
		missing = append(missing, filepath.Join(mods, modules[len(modules)-1]))
	}
	if len(missing) > 0 {
		pkgs := "linux-image-" + r.release() + " linux-headers-" + r.release()
		if r.release() == KernelRelease612 {
			pkgs = "linux-image-" + r.release() + "-unsigned xz-utils"
		} else if r.NoCrashmod {
			pkgs = "linux-image-" + r.release()
		}
		return "missing " + strings.Join(missing, ", ") +
			" (apt-get install qemu-system-x86 " + pkgs + " busybox-static gcc make iproute2)"
	}
	return ""
}

// Artifacts are the built inputs of a run.
type Artifacts struct {
	// Dir is the cache subdirectory holding them.
	Dir string
	// Initramfs is the gzipped newc cpio archive booted with -initrd.
	Initramfs string
	// Module is crashmod.ko (also inside the initramfs); with
	// Rig.NoCrashmod it does not exist.
	Module string
}

// Build builds crashmod, memhog and the initramfs, or finds them in the
// cache when no input has changed since they were built. It is safe for
// concurrent use; within a Rig it builds at most once.
func (r *Rig) Build(ctx context.Context) (*Artifacts, error) {
	r.buildMu.Lock()
	defer r.buildMu.Unlock()
	if r.built != nil {
		return r.built, nil
	}
	src := r.sourceDir()
	mods := r.moduleDir()
	busybox := orDefault(r.Busybox, DefaultBusybox)

	// The key: every file that goes into the artifacts, and the headers'
	// identity (their kernel release and exported symbols).
	var inputs []string
	if !r.NoCrashmod {
		inputs = append(inputs, filepath.Join(src, "crashmod", "crashmod.c"), filepath.Join(src, "crashmod", "Makefile"))
	}
	inputs = append(inputs, filepath.Join(src, "memhog", "memhog.c"), filepath.Join(src, "init"), busybox)
	if !r.NoCrashmod {
		inputs = append(inputs, filepath.Join(mods, "build", "Module.symvers"))
	}
	// The modules the kernel has as files; name: path.
	var modFiles [][2]string
	for _, m := range modules {
		p, err := r.modulePath(m)
		if err != nil {
			return nil, err
		}
		if p != "" {
			inputs = append(inputs, p)
			modFiles = append(modFiles, [2]string{"lib/modules/" + filepath.Base(m), p})
		}
	}
	h := sha256.New()
	fmt.Fprintf(h, "kernelrig v1 %s\n", r.release())
	if r.NoCrashmod {
		fmt.Fprintf(h, "no crashmod\n")
	}
	for _, f := range inputs {
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("kernelrig: build input: %w", err)
		}
		fmt.Fprintf(h, "%s %d\n", filepath.Base(f), len(data))
		h.Write(data)
	}
	key := hex.EncodeToString(h.Sum(nil))[:16]
	dir := filepath.Join(orDefault(r.CacheDir, DefaultCacheDir), key)
	a := &Artifacts{
		Dir:       dir,
		Initramfs: filepath.Join(dir, "initramfs.cpio.gz"),
		Module:    filepath.Join(dir, "crashmod.ko"),
	}
	if _, err := os.Stat(a.Initramfs); err == nil {
		r.built = a
		return a, nil
	}

	r.logf("kernelrig: building crashmod and the initramfs in %s", dir)
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return nil, fmt.Errorf("kernelrig: %w", err)
	}
	tmp, err := os.MkdirTemp(filepath.Dir(dir), key+".tmp-")
	if err != nil {
		return nil, fmt.Errorf("kernelrig: %w", err)
	}
	defer os.RemoveAll(tmp)

	// crashmod: a copy of its directory, built in place with Kbuild.
	modDir := filepath.Join(tmp, "crashmod")
	if !r.NoCrashmod {
		if err := os.MkdirAll(modDir, 0o755); err != nil {
			return nil, fmt.Errorf("kernelrig: %w", err)
		}
		for _, f := range []string{"crashmod.c", "Makefile"} {
			if err := copyFile(filepath.Join(src, "crashmod", f), filepath.Join(modDir, f), 0o644); err != nil {
				return nil, err
			}
		}
		if err := run(ctx, "", "make", "-C", filepath.Join(mods, "build"), "M="+modDir, "modules"); err != nil {
			return nil, err
		}
	}
	memhog := filepath.Join(tmp, "memhog")
	if err := run(ctx, "", "gcc", "-static", "-O2", "-Wall", "-o", memhog, filepath.Join(src, "memhog", "memhog.c")); err != nil {
		return nil, err
	}

	// The initramfs.
	var files []cpioFile
	for _, d := range []string{"bin", "dev", "proc", "sys", "tmp", "lib", "lib/modules"} {
		files = append(files, cpioFile{name: d, mode: unix.S_IFDIR | 0o755})
	}
	files = append(files, cpioFile{name: "dev/console", mode: unix.S_IFCHR | 0o600, rdev: [2]uint32{5, 1}})
	add := func(name, from string, perm uint32) error {
		data, err := os.ReadFile(from)
		if err != nil {
			return fmt.Errorf("kernelrig: initramfs: %w", err)
		}
		files = append(files, cpioFile{name: name, mode: unix.S_IFREG | perm, data: data})
		return nil
	}
	adds := [][2]string{
		{"init", filepath.Join(src, "init")},
		{"bin/busybox", busybox},
		{"bin/memhog", memhog},
	}
	if !r.NoCrashmod {
		adds = append(adds, [2]string{"lib/modules/crashmod.ko", filepath.Join(modDir, "crashmod.ko")})
	}
	for _, f := range adds {
		perm := uint32(0o644)
		if strings.HasPrefix(f[0], "bin/") || f[0] == "init" {
			perm = 0o755
		}
		if err := add(f[0], f[1], perm); err != nil {
			return nil, err
		}
	}
	for _, f := range modFiles {
		data, err := readModule(ctx, f[1])
		if err != nil {
			return nil, err
		}
		files = append(files, cpioFile{name: f[0], mode: unix.S_IFREG | 0o644, data: data})
	}
	files = append(files, cpioFile{name: "bin/sh", mode: unix.S_IFLNK | 0o777, data: []byte("busybox")})
	var archive bytes.Buffer
	zw := gzip.NewWriter(&archive)
	if err := writeCpio(zw, files); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(tmp, "initramfs.cpio.gz"), archive.Bytes(), 0o644); err != nil {
		return nil, fmt.Errorf("kernelrig: %w", err)
	}
	if !r.NoCrashmod {
		if err := copyFile(filepath.Join(modDir, "crashmod.ko"), filepath.Join(tmp, "crashmod.ko"), 0o644); err != nil {
			return nil, err
		}
		os.RemoveAll(modDir)
	}
	if err := os.Rename(tmp, dir); err != nil {
		// Another process built the same key first: use its copy.
		if _, serr := os.Stat(a.Initramfs); serr != nil {
			return nil, fmt.Errorf("kernelrig: %w", err)
		}
	}
	r.built = a
	return a, nil
}

// BuildLastgasp builds a static lastgasp (CGO_ENABLED=0) from the
// repository this rig is part of into dir/lastgasp, for a guest's
// initramfs, and returns its path.
func (r *Rig) BuildLastgasp(ctx context.Context, dir string) (string, error) {
	goTool := filepath.Join(runtime.GOROOT(), "bin", "go")
	bin := filepath.Join(dir, "lastgasp")
	build := exec.CommandContext(ctx, goTool, "build", "-o", bin, "./cmd/lastgasp")
	build.Dir = filepath.Join(r.sourceDir(), "..", "..", "..")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		return "", fmt.Errorf("kernelrig: build a static lastgasp: %w\n%s", err, out)
	}
	return bin, nil
}

// appendFiles writes to path to a copy of the initramfs base followed by
// a second gzipped newc archive holding files. The kernel unpacks
// concatenated archives in order, a later one adding to (or replacing
// files of) the earlier ones.
func appendFiles(base, to string, files []File) error {
	data, err := os.ReadFile(base)
	if err != nil {
		return fmt.Errorf("kernelrig: initramfs: %w", err)
	}
	out := bytes.NewBuffer(data)
	var entries []cpioFile
	dirs := map[string]bool{}
	for _, f := range files {
		name := strings.TrimPrefix(filepath.Clean(f.Name), "/")
		for d := filepath.Dir(name); d != "." && !dirs[d]; d = filepath.Dir(d) {
			dirs[d] = true
			// Parents first: prepend, since the walk goes up.
			entries = append([]cpioFile{{name: d, mode: unix.S_IFDIR | 0o755}}, entries...)
		}
		content, err := os.ReadFile(f.From)
		if err != nil {
			return fmt.Errorf("kernelrig: initramfs: %w", err)
		}
		perm := uint32(f.Mode.Perm())
		if perm == 0 {
			perm = 0o644
		}
		entries = append(entries, cpioFile{name: name, mode: unix.S_IFREG | perm, data: content})
	}
	zw := gzip.NewWriter(out)
	if err := writeCpio(zw, entries); err != nil {
		return fmt.Errorf("kernelrig: initramfs: %w", err)
	}
	if err := zw.Close(); err != nil {
		return fmt.Errorf("kernelrig: initramfs: %w", err)
	}
	if err := os.WriteFile(to, out.Bytes(), 0o644); err != nil {
		return fmt.Errorf("kernelrig: initramfs: %w", err)
	}
	return nil
}

// run runs a command, returning an error that holds its output if it
// fails.
func run(ctx context.Context, dir, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("kernelrig: %s %s: %w\n%s", name, strings.Join(args, " "), err, out)
	}
	return nil
}

func copyFile(from, to string, perm os.FileMode) error {
	data, err := os.ReadFile(from)
	if err != nil {
		return fmt.Errorf("kernelrig: %w", err)
	}
	if err := os.WriteFile(to, data, perm); err != nil {
		return fmt.Errorf("kernelrig: %w", err)
	}
	return nil
}

// cpioFile is one entry of a newc archive.
type cpioFile struct {
	name string
	mode uint32    // type and permission bits
	rdev [2]uint32 // major, minor of a device node
	data []byte    // contents, or a symlink's target
}

// writeCpio writes files as a newc ("070701") cpio archive, the format
// the kernel unpacks an initramfs from, owned by root, dated 0.
func writeCpio(w io.Writer, files []cpioFile) error {
	pad := func(n int) []byte { return make([]byte, (4-n%4)%4) }
	ino := uint32(1)
	entry := func(f cpioFile) error {
		name := f.name + "\x00"
		hdr := fmt.Sprintf("070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
			ino, f.mode, 0, 0, 1, 0, len(f.data), 0, 0, f.rdev[0], f.rdev[1], len(name), 0)
		ino++
		var b bytes.Buffer
		b.WriteString(hdr)
		b.WriteString(name)
		b.Write(pad(len(hdr) + len(name)))
		b.Write(f.data)
		b.Write(pad(len(f.data)))
		_, err := w.Write(b.Bytes())
		return err
	}
	for _, f := range files {
		if err := entry(f); err != nil {
			return err
		}
	}
	return entry(cpioFile{name: "TRAILER!!!"})
}

// Scenario is one boot of the guest: how its netconsole is set up, and
// how it fails.
type Scenario struct {
	// Name names the run and its files (NAME.pcap, NAME.console.log).
	Name string
	// Mode is what the guest does after its noise lines: "none",
	// "sysrq", "oom", "script" (runs /script, one of Files), or a
	// crashmod mode ("panic", "null", "bug", "warn", "gpf",
	// "softlockup", "hardlockup", "hung", "rcustall", "long"). See
	// kernelrig/init and crashmod/crashmod.c.
	Mode string
	// Extended selects netconsole's extended format ("+" target).
	Extended bool
	// IPv6 sends to the collector's IPv6 address, from the guest's.
	IPv6 bool
	// NoNetconsole leaves netconsole out of the kernel command line:
	// /init does not load it, the scenario's script does (bare, to be
	// configured through configfs).
	NoNetconsole bool
	// Sysctls are set before the failure: "kernel.panic_on_oops=1", or
	// a path, "/sys/module/rcupdate/parameters/rcu_cpu_stall_timeout=3".
	Sysctls []string
	// Noise is the number of ordinary lines logged before the failure.
	Noise int
	// Seconds is crashmod's seconds= (how long spinning and sleeping
	// modes last); 0 leaves the module's default (30).
	Seconds int
	// Wait is how long the guest waits after the failure before it says
	// "lg-done: guest still alive" and powers off. Default 3s.
	Wait time.Duration
	// CPUs is the guest's CPU count. Default 1.
	CPUs int
	// MemoryMB is the guest's memory. Default 256.
	MemoryMB int
	// KernelArgs are appended to the kernel command line.
	KernelArgs []string
	// Timeout ends the run (qemu killed) if the guest has not ended it.
	// Default 60s.
	Timeout time.Duration
	// Files are added to the initramfs for this run only (a second
	// archive appended to the cached one, which the kernel unpacks over
	// it): a program to run in the guest, its input, and with Mode
	// "script", the script itself ("script"). Never cached.
	Files []File
}

// File is a host file put into the guest's initramfs.
type File struct {
	// Name is its path in the guest, relative to /: "bin/lastgasp".
	// Missing parent directories are created.
	Name string
	// From is the host file it is read from.
	From string
	// Mode is its permission bits. Default 0o644.
	Mode os.FileMode
}

// netconsoleParam returns the netconsole= parameter for s ("" with
// NoNetconsole).
func (s Scenario) netconsoleParam() string {
	if s.NoNetconsole {
		return ""
	}
	src, dst := NodeIPv4, CollectorIPv4
	if s.IPv6 {
		src, dst = NodeIPv6, CollectorIPv6
	}
	p := fmt.Sprintf("%d@%s/eth0,%d@%s/", NodePort, src, CollectorPort, dst)
	if s.Extended {
		p = "+" + p
	}
	return p
}

// CommandLine returns the kernel command line that runs s.
func (s Scenario) CommandLine() string {
	wait := s.Wait
	if wait <= 0 {
		wait = 3 * time.Second
	}
	args := []string{
		// panic=1: "Rebooting in 1 seconds..", then a reboot that ends
		// qemu (-no-reboot). The second lets qemu's virtio-net send
		// what the dying kernel queued.
		"console=ttyS0", "panic=1", "loglevel=7",
		"lg.mode=" + s.Mode,
		"lg.nc=" + s.netconsoleParam(),
		"lg.sysctl=" + strings.Join(s.Sysctls, ","),
		"lg.noise=" + strconv.Itoa(s.Noise),
		"lg.wait=" + strconv.Itoa(int(wait.Round(time.Second)/time.Second)),
	}
	if s.Seconds > 0 {
		args = append(args, "lg.seconds="+strconv.Itoa(s.Seconds))
	}
	return strings.Join(append(args, s.KernelArgs...), " ")
}

// Result is what a run produced.
type Result struct {
	// Pcap is the capture: every UDP datagram the guest sent.
	Pcap string
	// Console is the serial console log.
	Console string
	// Packets counts the datagrams captured.
	Packets int
	// Panicked is set when the console shows "Kernel panic - not syncing".
	Panicked bool
	// Alive is set when the console shows "lg-done: guest still alive":
	// the guest survived its failure.
	Alive bool
	// TimedOut is set when the run hit its Timeout and qemu was killed.
	TimedOut bool
	// Elapsed is how long qemu ran.
	Elapsed time.Duration
}

// Run boots the guest for s and captures its netconsole into
// dir/NAME.pcap, its serial console into dir/NAME.console.log. It builds
// the artifacts first if needed. A guest that panics, powers off or times
// out is a successful run: read the Result to know which. Run cleans up
// everything it made but the two files, even on error.
func (r *Rig) Run(ctx context.Context, s Scenario, dir string) (*Result, error) {
	if s.Name == "" || s.Mode == "" {
		return nil, errors.New("kernelrig: a scenario needs a name and a mode")
	}
	a, err := r.Build(ctx)
	if err != nil {
		return nil, err
	}
	if s.Timeout <= 0 {
		s.Timeout = 60 * time.Second
	}
	if s.CPUs <= 0 {
		s.CPUs = 1
	}
	if s.MemoryMB <= 0 {
		s.MemoryMB = 256
	}
	res := &Result{
		Pcap:    filepath.Join(dir, s.Name+".pcap"),
		Console: filepath.Join(dir, s.Name+".console.log"),
	}
	initramfs := a.Initramfs
	if len(s.Files) > 0 {
		tmp, err := os.MkdirTemp("", "kernelrig-files-")
		if err != nil {
			return nil, fmt.Errorf("kernelrig: %w", err)
		}
		defer os.RemoveAll(tmp)
		initramfs = filepath.Join(tmp, "initramfs.cpio.gz")
		if err := appendFiles(a.Initramfs, initramfs, s.Files); err != nil {
			return nil, err
		}
	}

	ns, cleanup, err := newTapNetns()
	if err != nil {
		return nil, err
	}
	defer cleanup()
	if r.Collector != nil {
		if err := r.Collector(ns, tapName); err != nil {
			return nil, fmt.Errorf("kernelrig: %s: collector: %w", s.Name, err)
		}
	}

	capture, err := startCapture(ns, res.Pcap)
	if err != nil {
		return nil, err
	}
	defer capture.stop()

	os.Remove(res.Console)
	qemu := orDefault(r.QEMU, DefaultQEMU)
	args := []string{
		"netns", "exec", ns.Name, qemu,
		"-nodefaults", "-machine", "pc", "-accel", "tcg",
		"-smp", strconv.Itoa(s.CPUs), "-m", strconv.Itoa(s.MemoryMB),
		"-display", "none", "-monitor", "none", "-no-reboot",
		"-serial", "file:" + res.Console,
		"-kernel", r.kernel(),
		"-initrd", initramfs,
		"-append", s.CommandLine(),
		"-netdev", "tap,id=n0,ifname=" + tapName + ",script=no,downscript=no",
		"-device", "virtio-net-pci,netdev=n0,mac=" + guestMAC + ",romfile=",
	}
	r.logf("kernelrig: %s: booting: %s", s.Name, s.CommandLine())
	runCtx, cancel := context.WithTimeout(ctx, s.Timeout)
	defer cancel()
	cmd := exec.CommandContext(runCtx, "ip", args...)
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	cmd.WaitDelay = 5 * time.Second
	start := time.Now()
	err = cmd.Run()
	res.Elapsed = time.Since(start)
	timedOut := runCtx.Err() != nil && ctx.Err() == nil
	// The last datagrams are on their way through the tap: give them a
	// moment before the capture stops.
	time.Sleep(200 * time.Millisecond)
	n, cerr := capture.stop()
	res.Packets = n
	if cerr != nil {
		return res, cerr
	}
	if ctx.Err() != nil {
		return res, ctx.Err()
	}
	if err != nil && !timedOut {
		return res, fmt.Errorf("kernelrig: %s: qemu: %w: %s", s.Name, err, strings.TrimSpace(stderr.String()))
	}
	res.TimedOut = timedOut
	console, err := os.ReadFile(res.Console)
	if err != nil {
		return res, fmt.Errorf("kernelrig: %s: %w", s.Name, err)
	}
	res.Panicked = bytes.Contains(console, []byte("Kernel panic - not syncing"))
	res.Alive = bytes.Contains(console, []byte("lg-done: guest still alive"))
	r.logf("kernelrig: %s: %d datagrams in %s (panicked %v, alive %v, timed out %v)",
		s.Name, res.Packets, res.Elapsed.Round(100*time.Millisecond), res.Panicked, res.Alive, res.TimedOut)
	return res, nil
}

// GuestLines returns a serial console log's lines for the test, those
// starting "lg-...: ", by prefix, the prefix taken off.
func GuestLines(console []byte) map[string][]string {
	out := map[string][]string{}
	sc := bufio.NewScanner(bytes.NewReader(console))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		prefix, rest, ok := strings.Cut(line, ": ")
		if !ok || !strings.HasPrefix(prefix, "lg-") {
			continue
		}
		out[prefix] = append(out[prefix], rest)
	}
	return out
}

// newTapNetns creates a network namespace holding a tap device with the
// collector's addresses, up, and returns it with the function that
// deletes it (and with it the tap).
func newTapNetns() (*testnet.Netns, func(), error) {
	id := make([]byte, 4)
	rand.Read(id)
	ns := &testnet.Netns{Name: "lastgasp-rig-" + hex.EncodeToString(id)}
	if out, err := exec.Command("ip", "netns", "add", ns.Name).CombinedOutput(); err != nil {
		return nil, nil, fmt.Errorf("kernelrig: ip netns add: %w: %s", err, out)
	}
	cleanup := func() { exec.Command("ip", "netns", "del", ns.Name).Run() }
	for _, cmd := range [][]string{
		{"link", "set", "dev", "lo", "up"},
		{"tuntap", "add", "dev", tapName, "mode", "tap"},
		// No link-local address, no router solicitations: the tap sends
		// the guest as little as possible.
		{"link", "set", "dev", tapName, "addrgenmode", "none"},
		{"addr", "add", CollectorIPv4 + "/24", "dev", tapName},
		{"addr", "add", CollectorIPv6 + "/64", "dev", tapName, "nodad"},
		{"link", "set", "dev", tapName, "up"},
	} {
		if _, err := ns.IP(cmd...); err != nil {
			cleanup()
			return nil, nil, fmt.Errorf("kernelrig: %w", err)
		}
	}
	return ns, cleanup, nil
}

// capture reads the frames arriving on the tap (sent by the guest) and
// writes its UDP datagrams to a pcap file.
type capture struct {
	fd      int
	file    *os.File
	w       *pcapgo.Writer
	done    chan struct{}
	stopped chan struct{}
	once    sync.Once
	packets int
	err     error
}

// startCapture opens an AF_PACKET socket on the tap inside ns and starts
// writing what it receives to path.
func startCapture(ns *testnet.Netns, path string) (*capture, error) {
	c := &capture{fd: -1, done: make(chan struct{}), stopped: make(chan struct{})}
	err := ns.Do(func() error {
		ifi, err := net.InterfaceByName(tapName)
		if err != nil {
			return err
		}
		proto := int(htons(unix.ETH_P_ALL))
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, proto)
		if err != nil {
			return fmt.Errorf("AF_PACKET socket: %w", err)
		}
		c.fd = fd
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index}); err != nil {
			return fmt.Errorf("bind to %s: %w", tapName, err)
		}
		// Room for the boot log netconsole replays at once.
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 32<<20)
		// Wake up now and then to see whether to stop.
		tv := unix.NsecToTimeval((100 * time.Millisecond).Nanoseconds())
		return unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	})
	if err != nil {
		if c.fd >= 0 {
			unix.Close(c.fd)
		}
		return nil, fmt.Errorf("kernelrig: capture: %w", err)
	}
	f, err := os.Create(path)
	if err != nil {
		unix.Close(c.fd)
		return nil, fmt.Errorf("kernelrig: %w", err)
	}
	c.file = f
	c.w = pcapgo.NewWriter(f)
	if err := c.w.WriteFileHeader(65536, layers.LinkTypeEthernet); err != nil {
		f.Close()
		unix.Close(c.fd)
		return nil, fmt.Errorf("kernelrig: %w", err)
	}
	go c.loop()
	return c, nil
}

func (c *capture) loop() {
	defer close(c.stopped)
	buf := make([]byte, 65536)
	for {
		n, from, err := unix.Recvfrom(c.fd, buf, 0)
		now := time.Now()
		if err != nil {
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
				select {
				case <-c.done:
					return
				default:
					continue
				}
			}
			c.err = fmt.Errorf("kernelrig: capture: %w", err)
			return
		}
		if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Pkttype == unix.PACKET_OUTGOING {
			continue // sent by the collector's side, not the guest
		}
		frame := buf[:n]
		if !isUDP(frame) {
			continue
		}
		ci := gopacket.CaptureInfo{Timestamp: now, CaptureLength: n, Length: n}
		if err := c.w.WritePacket(ci, frame); err != nil {
			c.err = fmt.Errorf("kernelrig: capture: %w", err)
			return
		}
		c.packets++
	}
}

// stop ends the capture, closes the file and returns the datagrams
// written. It may be called more than once.
func (c *capture) stop() (int, error) {
	c.once.Do(func() {
		close(c.done)
		<-c.stopped
		unix.Close(c.fd)
		if err := c.file.Close(); err != nil && c.err == nil {
			c.err = fmt.Errorf("kernelrig: capture: %w", err)
		}
	})
	return c.packets, c.err
}

// isUDP reports whether an Ethernet frame holds a UDP datagram over IPv4
// or IPv6 (no VLAN tags, no IPv6 extension headers: the guest sends none).
func isUDP(frame []byte) bool {
	if len(frame) < 14 {
		return false
	}
	switch binary.BigEndian.Uint16(frame[12:14]) {
	case 0x0800:
		return len(frame) >= 14+20 && frame[14+9] == unix.IPPROTO_UDP
	case 0x86dd:
		return len(frame) >= 14+40 && frame[14+6] == unix.IPPROTO_UDP
	}
	return false
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }
