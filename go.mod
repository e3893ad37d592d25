module github.com/lastgasp/lastgasp

go 1.26.0

require (
	github.com/cilium/ebpf v0.22.0
	github.com/gopacket/gopacket v1.7.7
	golang.org/x/sys v0.49.0
	k8s.io/utils v0.0.0-20261023123148-ca04ba58ecab
)

require golang.org/x/net v0.55.0 // indirect

tool github.com/cilium/ebpf/cmd/bpf2go
