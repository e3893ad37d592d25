#!/usr/bin/env bash
# Builds a real Kubernetes control plane for the tests and the demo, from
# the Go module proxy, once: kube-apiserver, kube-controller-manager and
# etcd, cached outside git in $LASTGASP_CONTROLPLANE (default
# /var/cache/lastgasp/controlplane/<version>). Prints that directory.
#
# The binaries come from a throwaway module that requires k8s.io/kubernetes
# and points each of its staging modules (which it replaces with ./staging
# paths in its own go.mod) at the published k8s.io/X v0.<minor>.<patch>;
# etcd is the one kubernetes itself requires. About 10 minutes on 2 cores
# the first time; nothing afterwards.
set -euo pipefail
export PATH=$PATH:/usr/local/go/bin

version=${KUBERNETES_VERSION:-1.37.2}
dir=${LASTGASP_CONTROLPLANE:-/var/cache/lastgasp/controlplane/v$version}
bins=(kube-apiserver kube-controller-manager etcd)

have_all() { for b in "${bins[@]}"; do [ -x "$dir/$b" ] || return 1; done; }
if have_all; then echo "$dir"; exit 0; fi

# One build at a time: test packages run in parallel, and each may ask.
# The others wait here for the first, then find the binaries built.
mkdir -p "$dir"
exec 9>"$dir/.lock"
flock 9
if have_all; then echo "$dir"; exit 0; fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"

staging_version=v0.${version#1.}
gomod=$(go mod download -json "k8s.io/kubernetes@v$version" | sed -n 's/.*"GoMod": "\(.*\)",*/\1/p')
{
	echo "module lastgasp.local/controlplane"
	echo
	grep -E '^go [0-9]' "$gomod"
	echo
	echo "require k8s.io/kubernetes v$version"
	echo
	grep -E '^\s*k8s.io/[a-z-]+ => ./staging' "$gomod" | awk -v v="$staging_version" '{print "replace " $1 " => " $1 " " v}'
} > go.mod
cat > tools.go <<'GO'
//go:build tools

package tools

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
)
GO
echo "building kube-apiserver, kube-controller-manager and etcd v$version into $dir (once; about 10 minutes)" >&2
GOFLAGS=-mod=mod go mod tidy -e >&2 2>/dev/null || true
GOFLAGS=-mod=mod go get "k8s.io/kubernetes@v$version" go.etcd.io/etcd/server/v3 >&2
CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -ldflags='-s -w' -o "$dir/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver
CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -ldflags='-s -w' -o "$dir/kube-controller-manager" k8s.io/kubernetes/cmd/kube-controller-manager
CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -ldflags='-s -w' -o "$dir/etcd" go.etcd.io/etcd/server/v3
have_all
echo "$dir"
