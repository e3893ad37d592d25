// Package loader puts the XDP netconsole filter (package bpf) into the
// kernel: it sets the program's load-time constants, creates its maps (or
// reuses pinned ones, so that a restarted collector loses nothing), fills
// the port and pattern tables, attaches the program to interfaces and reads
// its counters.
package loader

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/lastgasp/lastgasp/bpf"
	"github.com/lastgasp/lastgasp/internal/pattern"
)

// DefaultPort is where netconsole sends unless told otherwise.
const DefaultPort = 6666

// Config is what the program is loaded with. The zero value of each field
// means its default.
type Config struct {
	// Ports are the UDP destination ports netconsole lines arrive on.
	// Default: DefaultPort. They can be changed later with SetPorts.
	Ports []uint16
	// Patterns is the pattern table. Default: pattern.Default(). It can be
	// changed later with SetPatterns.
	Patterns *pattern.Table
	// BurstLines is the most lines from a source forwarded as context
	// after a match (a match within a burst starts it again): a burst
	// stays open until the kernel's end marker of the report ("---[ end
	// trace", "---[ end Kernel panic"), this many lines, or BurstTimeout.
	// Default DefaultBurstLines; never less than ContextLines.
	BurstLines uint32
	// ContextLines is how many lines a burst still forwards after the end
	// marker (an Oops prints its registers again after it, then the
	// panic). Default 20; set NoContext for no bursts at all.
	ContextLines uint32
	// NoContext turns context bursts off.
	NoContext bool
	// BurstTimeout closes a burst this long after its last match, whatever
	// lines it has left. Default 10s.
	BurstTimeout time.Duration
	// BurstSources is how many sources' bursts the program remembers
	// (the size of its LRU hash): past it, the least recently used are
	// forgotten, and their bursts end early. Default and most BURSTS_MAX
	// (100,000); fewer save kernel memory (about 100 bytes a source), and
	// let a test reach eviction without 100,000 sources.
	BurstSources uint32
	// LocalOnly judges only datagrams addressed to this host: to an
	// address of the local address table (SetLocalAddresses), or to a
	// broadcast or multicast address. Others to a netconsole port (a
	// router's or gateway's traffic) are passed, to be routed on, and
	// counted in not_local. The table starts empty: fill it before
	// attaching (package localaddr lists the addresses and follows
	// their changes).
	LocalOnly bool
	// ForwardPass lets every netconsole packet go on up the network stack
	// after the program handled it; by default they are dropped.
	ForwardPass bool
	// RingBufSize is the ring buffer's size in bytes: a power of two and a
	// multiple of the page size. Default 16 MiB (records are sized to
	// their line: about 150,000 lines of 60 bytes).
	RingBufSize uint32
	// WakeBytes: context records do not wake the reader until this many
	// bytes wait in the ring buffer. Default RingBufSize/8.
	WakeBytes uint32
	// PinPath, if set, is a directory on a bpffs where the maps and links
	// are pinned, so that they outlive this process: a later Load with the
	// same PinPath reuses them, and Attach takes over the attached program
	// without a gap. One Program at a time holds a PinPath: Load takes a
	// lock on it (released by Close, or when the process exits) and fails
	// with ErrPinPathInUse, before touching anything pinned, while
	// another holds it.
	PinPath string
	// Logger receives what the loader does. Default slog.Default().
	Logger *slog.Logger
}

// Defaults of Config.
const (
	DefaultContextLines = 20
	DefaultBurstLines   = 256
	DefaultBurstTimeout = 10 * time.Second
	DefaultRingBufSize  = 16 << 20
)

// withDefaults returns cfg with every zero field set to its default, or an
// error naming the first invalid field.
func (cfg Config) withDefaults() (Config, error) {
	if len(cfg.Ports) == 0 {
		cfg.Ports = []uint16{DefaultPort}
	}
	if cfg.Patterns == nil {
		cfg.Patterns = pattern.Default()
	}
	if cfg.NoContext {
		cfg.ContextLines, cfg.BurstLines = 0, 0
	} else {
		if cfg.ContextLines == 0 {
			cfg.ContextLines = DefaultContextLines
		}
		if cfg.BurstLines == 0 {
			cfg.BurstLines = DefaultBurstLines
		}
		cfg.BurstLines = max(cfg.BurstLines, cfg.ContextLines)
	}
	if cfg.BurstTimeout == 0 {
		cfg.BurstTimeout = DefaultBurstTimeout
	}
	if cfg.BurstSources == 0 {
		cfg.BurstSources = uint32(bpf.LastgaspLimitsBURSTS_MAX)
	}
	if cfg.BurstSources > uint32(bpf.LastgaspLimitsBURSTS_MAX) {
		return cfg, fmt.Errorf("burst sources %d: at most %d", cfg.BurstSources, bpf.LastgaspLimitsBURSTS_MAX)
	}
	if cfg.BurstTimeout < 0 {
		return cfg, fmt.Errorf("burst timeout %v: must be positive", cfg.BurstTimeout)
	}
	if cfg.RingBufSize == 0 {
		cfg.RingBufSize = DefaultRingBufSize
	}
	page := uint32(os.Getpagesize())
	if cfg.RingBufSize&(cfg.RingBufSize-1) != 0 || cfg.RingBufSize%page != 0 {
		return cfg, fmt.Errorf("ring buffer size %d: must be a power of two and a multiple of the page size (%d)", cfg.RingBufSize, page)
	}
	if cfg.WakeBytes == 0 {
		cfg.WakeBytes = cfg.RingBufSize / 8
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return cfg, nil
}

// Program is the loaded XDP program and its maps.
type Program struct {
	objs     bpf.LastgaspObjects
	cfg      Config
	log      *slog.Logger
	attached []*Attachment
	lock     *os.File // the pin directory, flocked; nil without PinPath
}

// Load loads the XDP program with cfg, and fills its port and pattern
// tables. With cfg.PinPath, maps pinned there by an earlier Load are reused
// (their contents kept) and new ones are pinned.
func Load(cfg Config) (*Program, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("load XDP program: %w", err)
	}
	spec, err := bpf.LoadLastgasp()
	if err != nil {
		return nil, fmt.Errorf("load XDP program: %w", err)
	}

	consts := map[string]any{
		bpf.LastgaspVarBurstLines:     cfg.BurstLines,
		bpf.LastgaspVarContextLines:   cfg.ContextLines,
		bpf.LastgaspVarBurstTimeoutNs: uint64(cfg.BurstTimeout),
		bpf.LastgaspVarForwardPass:    boolByte(cfg.ForwardPass),
		bpf.LastgaspVarLocalOnly:      boolByte(cfg.LocalOnly),
		bpf.LastgaspVarWakeBytes:      cfg.WakeBytes,
	}
	for name, value := range consts {
		if err := spec.Variables[name].Set(value); err != nil {
			return nil, fmt.Errorf("load XDP program: set %s: %w", name, err)
		}
	}
	spec.Maps[bpf.LastgaspMapEvents].MaxEntries = cfg.RingBufSize
	spec.Maps[bpf.LastgaspMapBursts].MaxEntries = cfg.BurstSources

	p := &Program{cfg: cfg, log: cfg.Logger}
	var opts ebpf.CollectionOptions
	if cfg.PinPath != "" {
		// The lock first: nothing pinned is opened, written or swapped
		// while another Program holds the path.
		if p.lock, err = lockPinPath(cfg.PinPath); err != nil {
			return nil, fmt.Errorf("load XDP program: %w", err)
		}
		for _, name := range pinnedMaps {
			spec.Maps[name].Pinning = ebpf.PinByName
		}
		opts.Maps.PinPath = cfg.PinPath
		if err := p.replaceIncompatible(spec); err != nil {
			p.unlock()
			return nil, fmt.Errorf("load XDP program: %w", err)
		}
	}

	if err := spec.LoadAndAssign(&p.objs, &opts); err != nil {
		p.unlock()
		return nil, fmt.Errorf("load XDP program: %w", explain(err, cfg.PinPath))
	}
	if err := p.stampVersion(); err != nil {
		p.objs.Close()
		p.unlock()
		return nil, fmt.Errorf("load XDP program: %w", err)
	}
	if err := p.SetPorts(cfg.Ports); err != nil {
		p.objs.Close()
		p.unlock()
		return nil, err
	}
	if err := p.SetPatterns(cfg.Patterns); err != nil {
		p.objs.Close()
		p.unlock()
		return nil, err
	}
	return p, nil
}

// ErrPinPathInUse is returned (wrapped) by Load when another Program, in
// this process or another, holds Config.PinPath.
var ErrPinPathInUse = errors.New("pin path in use")

// lockPinPath creates the pin directory if need be and takes an exclusive
// flock(2) on it, without waiting. The lock belongs to the open file: the
// kernel releases it when the file is closed, or when the process exits,
// however it exits, so a crashed collector never leaves it behind. Two
// collectors on one pin path would share its tables (each rewriting the
// other's ports and patterns), swap the pinned links' program back and
// forth, and both read the one ring buffer, each getting half the lines:
// the second must fail before it touches any of them.
func lockPinPath(dir string) (*os.File, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("pin path: %w", err)
	}
	f, err := os.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("pin path: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: %s is held by another lastgasp (one collector a pin path: stop it first, or give this one another --pin-path)", ErrPinPathInUse, dir)
		}
		return nil, fmt.Errorf("lock pin path %s: %w", dir, err)
	}
	return f, nil
}

// unlock releases the pin path's lock, if held.
func (p *Program) unlock() error {
	if p.lock == nil {
		return nil
	}
	err := p.lock.Close()
	p.lock = nil
	if err != nil {
		return fmt.Errorf("release pin path lock: %w", err)
	}
	return nil
}

// pinnedMaps are the maps that outlive the process under Config.PinPath:
// all of them, so that a restart keeps the tables, the open bursts, the
// counters and the lines not yet read.
var pinnedMaps = []string{
	bpf.LastgaspMapPorts,
	bpf.LastgaspMapLocalAddrs,
	bpf.LastgaspMapPatterns,
	bpf.LastgaspMapPatternFirstBytes,
	bpf.LastgaspMapBursts,
	bpf.LastgaspMapState,
	bpf.LastgaspMapCounters,
	bpf.LastgaspMapEvents,
}

// contractVersion is the version of the contract with the program (struct
// record, the maps' layouts: CONTRACT_VERSION in bpf/lastgasp.h).
const contractVersion = uint32(bpf.LastgaspLimitsCONTRACT_VERSION)

// replaceIncompatible removes the maps pinned under the pin path if any of
// them is not what this program needs: a layout that differs from spec's
// (an older lastgasp's state, bursts or record layout), or a state map of
// another contract version. All of them go, not only the one that
// differs: they are one set (a ring buffer of the old records, bursts of
// the old semantics). Without this, Load would fail on the first one
// (ebpf.ErrMapIncompatible), and the old program, still attached through
// its pinned link, would run on with nobody reading its ring buffer.
//
// Unpinning does not destroy a map in use: the old program keeps its maps
// until Attach swaps it out of the pinned link for this one, which runs
// on the maps LoadAndAssign then creates and pins afresh. Lines the old
// program writes in that gap (Load to Attach), and any unread in its ring
// buffer, are lost: they were of a record layout this reader cannot
// decode anyway.
func (p *Program) replaceIncompatible(spec *ebpf.CollectionSpec) error {
	var why []error
	var pinned []string
	for _, name := range pinnedMaps {
		path := filepath.Join(p.cfg.PinPath, name)
		m, err := ebpf.LoadPinnedMap(path, nil)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		pinned = append(pinned, path)
		if err != nil {
			why = append(why, fmt.Errorf("%s: %w", name, err))
			continue
		}
		if err := spec.Maps[name].Compatible(m); err != nil {
			why = append(why, fmt.Errorf("%s: %w", name, err))
		} else if name == bpf.LastgaspMapState {
			var st bpf.LastgaspSharedState
			if err := m.Lookup(uint32(0), &st); err != nil {
				why = append(why, fmt.Errorf("%s: read version: %w", name, err))
			} else if st.Version != contractVersion {
				why = append(why, fmt.Errorf("%s: contract version %d, want %d", name, st.Version, contractVersion))
			}
		}
		m.Close()
	}
	if len(why) == 0 {
		return nil
	}
	p.log.Warn("maps pinned by another version of lastgasp: replacing them (lines not yet read from the old ring buffer are lost)",
		"pin_path", p.cfg.PinPath, "why", errors.Join(why...).Error())
	for _, path := range pinned {
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("replace incompatible pinned map: %w", err)
		}
	}
	return nil
}

// stampVersion writes the contract version into maps just created (a
// state map of version 0). Maps found pinned carry it already: their
// state is never rewritten, since the program may be updating it.
func (p *Program) stampVersion() error {
	var st bpf.LastgaspSharedState
	if err := p.objs.State.Lookup(uint32(0), &st); err != nil {
		return fmt.Errorf("read state: %w", err)
	}
	if st.Version == contractVersion {
		return nil
	}
	st.Version = contractVersion
	if err := p.objs.State.Put(uint32(0), st); err != nil {
		return fmt.Errorf("write contract version: %w", err)
	}
	return nil
}

// explain turns a load error into one a person can act on.
func explain(err error, pinPath string) error {
	var ve *ebpf.VerifierError
	switch {
	case errors.As(err, &ve):
		return fmt.Errorf("the kernel's verifier rejected the program (full log follows): %+v", ve)
	case errors.Is(err, ebpf.ErrMapIncompatible):
		return fmt.Errorf("maps pinned under %s were made by a different configuration or version (remove the directory to start afresh): %w", pinPath, err)
	case errors.Is(err, os.ErrPermission):
		return fmt.Errorf("not permitted (needs CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON, or root): %w", err)
	}
	return err
}

func boolByte(b bool) uint8 {
	if b {
		return 1
	}
	return 0
}

// XDP returns the XDP program, for attaching or BPF_PROG_TEST_RUN.
func (p *Program) XDP() *ebpf.Program { return p.objs.LastgaspXdp }

// Events returns the ring buffer map the program writes records to.
func (p *Program) Events() *ebpf.Map { return p.objs.Events }

// Config returns the configuration the program was loaded with, defaults
// applied.
func (p *Program) Config() Config { return p.cfg }

// Close detaches what Attach attached (unless pinned) and releases the
// program and maps. Pinned maps and links stay in the kernel.
func (p *Program) Close() error {
	var errs []error
	for _, a := range p.attached {
		errs = append(errs, a.Close())
	}
	p.attached = nil
	errs = append(errs, p.objs.Close())
	errs = append(errs, p.unlock()) // last: nothing of ours is open any more
	return errors.Join(errs...)
}
