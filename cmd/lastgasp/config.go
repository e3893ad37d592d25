package main

import (
	"flag"
	"fmt"
	"os"
	"sort"
	"strconv"

	"sigs.k8s.io/yaml"
)

// maxConfigBytes bounds a config file.
const maxConfigBytes = 1 << 20

// applyConfigFile sets the flags of fs named in a config file (YAML or
// JSON, keys the flag names without dashes, values scalars or lists of
// them) that the command line did not set: the command line wins. An
// unknown key is an error, as an unknown flag is.
//
//	mode: xdp
//	interface: [eth0, eth1]
//	port: [6666]
//	journal: /var/lib/lastgasp/journal
func applyConfigFile(fs *flag.FlagSet, path string) error {
	info, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("--config: %w", err)
	}
	if info.Size() > maxConfigBytes {
		return fmt.Errorf("--config %s: %d bytes, at most %d", path, info.Size(), maxConfigBytes)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("--config: %w", err)
	}
	var values map[string]any
	if err := yaml.Unmarshal(data, &values); err != nil {
		return fmt.Errorf("--config %s: %w", path, err)
	}
	onCommandLine := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { onCommandLine[f.Name] = true })

	keys := make([]string, 0, len(values))
	for k := range values {
		keys = append(keys, k)
	}
	sort.Strings(keys) // errors in a stable order
	for _, key := range keys {
		if fs.Lookup(key) == nil || key == "config" {
			return fmt.Errorf("--config %s: unknown key %q", path, key)
		}
		if onCommandLine[key] {
			continue
		}
		items, isList := values[key].([]any)
		if !isList {
			items = []any{values[key]}
		} else if !takesList(fs.Lookup(key)) && len(items) != 1 {
			return fmt.Errorf("--config %s: %s: one value, not a list", path, key)
		}
		for _, item := range items {
			s, err := scalar(item)
			if err == nil {
				err = fs.Set(key, s)
			}
			if err != nil {
				return fmt.Errorf("--config %s: %s: %w", path, key, err)
			}
		}
	}
	return nil
}

// takesList reports whether a flag holds several values (--interface,
// --port, --allow).
func takesList(f *flag.Flag) bool {
	switch f.Value.(type) {
	case *stringList, *portList:
		return true
	}
	return false
}

// scalar spells a YAML scalar as a flag value.
func scalar(v any) (string, error) {
	switch v := v.(type) {
	case string:
		return v, nil
	case bool:
		return strconv.FormatBool(v), nil
	case float64:
		return strconv.FormatFloat(v, 'f', -1, 64), nil
	}
	return "", fmt.Errorf("%v: want a string, number, boolean or a list of them", v)
}
