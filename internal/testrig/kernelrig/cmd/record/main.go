// Command record (re)records the real-kernel captures of testdata/kernel:
// every scenario of kernelrig.Catalog, booted under qemu, its netconsole
// captured into NAME.pcap and its serial console kept as NAME.console.log.
//
//	go run ./internal/testrig/kernelrig/cmd/record [-out testdata/kernel] [-run REGEXP] [-parallel 2]
//
// It needs root and what kernelrig needs (see its package doc). Each run
// takes 6 to 25 s of TCG; runs go side by side, each in its own network
// namespace. testdata/kernel/README.md describes the captures and is kept
// by hand.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"regexp"
	"sync"
	"time"

	"github.com/lastgasp/lastgasp/internal/testrig/kernelrig"
)

func main() {
	out := flag.String("out", "testdata/kernel", "directory to write NAME.pcap and NAME.console.log into")
	match := flag.String("run", "", "record only the scenarios whose name matches this regular expression")
	parallel := flag.Int("parallel", 2, "runs at once")
	list := flag.Bool("list", false, "list the scenarios and their kernel command lines, record nothing")
	flag.Parse()

	re, err := regexp.Compile(*match)
	if err != nil {
		fmt.Fprintf(os.Stderr, "record: -run: %v\n", err)
		os.Exit(2)
	}
	var todo []kernelrig.Scenario
	for _, s := range kernelrig.Catalog() {
		if re.MatchString(s.Name) {
			todo = append(todo, s)
		}
	}
	if *list {
		for _, s := range todo {
			fmt.Printf("%-26s %s\n", s.Name, s.CommandLine())
		}
		return
	}
	rig := &kernelrig.Rig{Log: func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, format+"\n", args...)
	}}
	if why := rig.Missing(); why != "" {
		fmt.Fprintf(os.Stderr, "record: %s\n", why)
		os.Exit(1)
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		fmt.Fprintf(os.Stderr, "record: %v\n", err)
		os.Exit(1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if _, err := rig.Build(ctx); err != nil {
		fmt.Fprintf(os.Stderr, "record: %v\n", err)
		os.Exit(1)
	}

	start := time.Now()
	sem := make(chan struct{}, max(1, *parallel))
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		failed int
	)
	for _, s := range todo {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			res, err := rig.Run(ctx, s, *out)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				failed++
				fmt.Fprintf(os.Stderr, "record: %s: %v\n", s.Name, err)
				return
			}
			state := "alive"
			switch {
			case res.Panicked:
				state = "panicked"
			case res.TimedOut:
				state = "timed out"
			case !res.Alive:
				state = "ended without lg-done"
			}
			fmt.Printf("%-26s %4d datagrams  %5.1fs  %s\n", s.Name, res.Packets, res.Elapsed.Seconds(), state)
		}()
	}
	wg.Wait()
	fmt.Printf("%d scenarios in %s, %d failed\n", len(todo), time.Since(start).Round(time.Second), failed)
	if failed > 0 {
		os.Exit(1)
	}
}
