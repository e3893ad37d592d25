# lastgasp: `make help` lists the targets. Everything runs as root on Debian.

SHELL := /bin/bash
.DEFAULT_GOAL := help
export PATH := $(PATH):/usr/local/go/bin
GO ?= go

# What the build and the tests need from Debian: clang and llvm compile the
# XDP program, libbpf-dev has bpf_helpers.h, linux-libc-dev the protocol
# headers; iproute2 builds the test network namespaces; the real-kernel rig
# (internal/testrig/kernelrig/) boots Debian's 6.1 kernel under qemu with a busybox
# initramfs and builds its test module against the kernel's headers;
# nftables gives a test node a firewall that rejects (liveness); prometheus
# gives promtool, which unit-tests the alert rules (deploy/). KERNEL_612 is
# the second kernel the rig boots, the first with netconsole userdata (6.9+):
# no headers (no test module for it), its modules xz-compressed (xz-utils).
KERNEL_ABI := 6.1.0-56-amd64
KERNEL_612 := 6.12.107+deb12-amd64
DEBIAN_PACKAGES := clang llvm libbpf-dev linux-libc-dev bpftool iproute2 jq \
	qemu-system-x86 linux-image-$(KERNEL_ABI) linux-headers-$(KERNEL_ABI) busybox-static gcc make libc6-dev \
	linux-image-$(KERNEL_612)-unsigned xz-utils \
	nftables prometheus

.PHONY: help
help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  %-16s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: deps
deps: ## install what the build and tests need (apt packages, Go modules, bpffs, control plane)
	@missing=$$(for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "apt-get install $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	$(GO) mod download
	@mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
	@./internal/testrig/controlplane/build.sh >/dev/null

.PHONY: controlplane
controlplane: ## build (once, ~10 min, cached in /var/cache/lastgasp) kube-apiserver, kube-controller-manager and etcd
	./internal/testrig/controlplane/build.sh

.PHONY: generate
generate: ## compile bpf/*.c and regenerate its Go bindings (bpf2go)
	$(GO) generate ./bpf

.PHONY: check-generated
check-generated: ## fail if the committed BPF object and bindings are stale
	@tmp=$$(mktemp -d); cp bpf/lastgasp_bpfel.go bpf/lastgasp_bpfel.o $$tmp/; \
	$(GO) generate ./bpf; \
	if cmp -s $$tmp/lastgasp_bpfel.o bpf/lastgasp_bpfel.o && cmp -s $$tmp/lastgasp_bpfel.go bpf/lastgasp_bpfel.go; then \
		rm -rf $$tmp; echo "BPF object and bindings are up to date"; \
	else \
		cp $$tmp/* bpf/; rm -rf $$tmp; \
		echo "bpf/lastgasp_bpfel.{o,go} are stale: run 'make generate' and commit them" >&2; exit 1; \
	fi

.PHONY: build
build: ## build bin/lastgasp
	$(GO) build -o bin/lastgasp ./cmd/lastgasp

.PHONY: image
image: ## write the container image (static lastgasp, FROM scratch) as an OCI layout in bin/image, no Docker needed
	CGO_ENABLED=0 $(GO) build -o bin/lastgasp-static ./cmd/lastgasp
	$(GO) run ./cmd/image -binary bin/lastgasp-static -o bin/image

.PHONY: test
test: deps check-generated ## set up this machine and run every test
	$(GO) vet ./...
	$(GO) test -count=1 -timeout 15m ./...
	$(MAKE) --no-print-directory fuzz

# Every fuzz target runs this long in `make fuzz` (and so in `make test`):
# its seeds and the corpus kept in its package's testdata/fuzz first, then
# new inputs. A failing input is written to testdata/fuzz: commit it.
FUZZTIME ?= 10s

.PHONY: fuzz
fuzz: ## run each fuzz target for FUZZTIME (10s), one after the other
	@set -e; for f in $$(grep -rl --include='*_test.go' '^func Fuzz' .); do \
		pkg=$$(dirname $$f); \
		for name in $$(sed -n 's/^func \(Fuzz[A-Za-z0-9_]*\)(.*/\1/p' $$f); do \
			echo "fuzz $$pkg $$name ($(FUZZTIME))"; \
			$(GO) test -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) $$pkg; \
		done; \
	done

.PHONY: bench
bench: deps ## run the benchmarks (see bench/README.md; issue 16's scenarios have targets of their own, bench-flood, bench-sources, bench-cleanup, bench-restart)
	$(GO) test -run '^$$' -bench . -skip '^Benchmark(Flood|Sources)$$' -benchmem ./bench/
	$(GO) test -run '^$$' -bench '^BenchmarkDaemonForgedFlood$$' -benchtime 3x -timeout 30m ./cmd/lastgasp/

.PHONY: bench-flood
bench-flood: deps ## issue 16's flood: every receiver at stepped rates, bench/results/flood.{json,md} and plots (~2.5 min; BENCH_FULL=1 ~15 min)
	$(GO) test -run '^$$' -bench '^BenchmarkFlood$$' -benchtime 1x -timeout 60m ./bench/
	@echo "bench/results/flood.md, flood.json, flood-*.png written"

.PHONY: bench-sources
bench-sources: deps ## issue 16's scenario 2: the XDP program's cost per packet with 1 to 100,000 sources' bursts open, by BPF_PROG_TEST_RUN and through the live generator, bench/results/sources.json (~30 s)
	$(GO) test -run '^$$' -bench '^BenchmarkSources$$' -benchtime 1x ./bench/

.PHONY: bench-cleanup
bench-cleanup: deps ## issue 16's scenario 3: first panic packet to Node deleted through the daemon (XDP, real API server), 1 node x 110 pods and 100 nodes at once, bench/results/cleanup.json (~3 min)
	$(GO) test -run '^$$' -bench '^BenchmarkDaemonCleanup$$' -benchtime 1x -timeout 30m ./cmd/lastgasp/

.PHONY: bench-restart
bench-restart: deps ## issue 16's scenario 4: 3 runs of 20 panics while the daemon is SIGKILLed and restarted on its pinned maps, recall in bench/results/restart.json (~3 min)
	$(GO) test -run '^$$' -bench '^BenchmarkDaemonRestart$$' -benchtime 3x -timeout 30m ./cmd/lastgasp/

.PHONY: record-kernel
record-kernel: deps ## re-record the real-kernel captures in testdata/kernel (qemu, ~4 min)
	$(GO) run ./internal/testrig/kernelrig/cmd/record -out testdata/kernel

.PHONY: demo
demo: deps build ## the whole appliance: control plane, a node host, its pods, a real panic, the cleanup
	$(GO) run ./cmd/demo

.PHONY: demo-kernel
demo-kernel: deps build ## make demo with a real kernel panicking live under qemu (about a minute)
	$(GO) run ./cmd/demo --kernel

.PHONY: demo-scan
demo-scan: deps build ## run the real panic captures through the XDP program (no cluster)
	./cmd/demo/scan.sh
