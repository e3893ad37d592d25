#!/usr/bin/env bash
# The captures demo (make demo-scan): the real netconsole captures of a Debian kernel
# (testdata/netconsole, from ../shared/fixtures) run through the real XDP program with
# BPF_PROG_TEST_RUN, no cluster. make demo is the whole appliance.
set -euo pipefail
cd "$(dirname "$0")/../.."
fixtures=${FIXTURES:-testdata/netconsole}

for name in healthy warn-alive null-oops-panic sysrq-ext-v4; do
	pcap="$fixtures/$name.pcap"
	echo "== $name: a real kernel's netconsole traffic, every packet through the XDP program"
	stats=$(./bin/lastgasp scan --lines --stats "$pcap" 2>&1 >"/tmp/lastgasp-demo-$name.jsonl")
	jq -r '"   \(.packets) packets: \(.matched) matched a pattern, \(.context) more sent as context, \(.dropped - .matched - .context) dropped in the kernel"' <<<"$stats"
	rm -f "/tmp/lastgasp-demo-$name.jsonl"
	./bin/lastgasp scan "$pcap" | jq -r '"   incident \(.id): \(.kind), \(if .fatal then "FATAL: the node is dead" else "not fatal: the node lives on" end)\n     reason: \(.reason)\n     cause:  \(.cause)\n     blamed: \(.task // "-") \(.module // "")"'
	[ -n "$(./bin/lastgasp scan "$pcap")" ] || echo "   no incident"
done
