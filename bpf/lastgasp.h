/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * lastgasp.h: the contract between the XDP program and Go.
 *
 * Everything here is exported to Go by bpf2go (-type), so the Go side never
 * keeps a hand-written copy: the limits become Go constants, the structs Go
 * types with the same layout.
 */
#ifndef LASTGASP_H
#define LASTGASP_H

#include <linux/types.h>

/* Limits of the program, exported to Go as constants. */
enum limits {
	/* Longest pattern prefix, in bytes. The pattern table is an LPM trie
	 * keyed by the first PATTERN_MAX_LEN bytes of the message text. */
	PATTERN_MAX_LEN = 64,
	/* Bytes of payload searched for the end of the netconsole header:
	 * the ';' of an extended header must fall inside this window. The
	 * longest header the kernel sends is netconsole's "release" prepend
	 * (the kernel release, up to 64 bytes, and a ',') before
	 * "<level>,<seq>,<usec>,<flag>,caller=<id>,ncfrag=<off>/<len>;"
	 * (3 + 20 + 20 + 1 digits and flag, "caller=T" and 10 digits, 4 + 4
	 * digits): 65 + 47 + 19 + 17 + 1 = 149 bytes. A payload that starts
	 * like a header (a digit) and has neither ';' nor ' ' within the
	 * window is counted in long_header and never dropped. */
	HEADER_SCAN_LEN = 160,
	/* Longest "[...]" group skipped before the text of a basic line: the
	 * printk time "[12345678.123456]" or the caller id "[  T12345]". */
	BRACKET_MAX_LEN = 32,
	/* Bytes of payload a ring buffer record holds. netconsole never sends
	 * more than 1000 bytes a datagram (MAX_PRINT_CHUNK); the rest is
	 * headroom. Longer datagrams are cut and flagged RECORD_TRUNCATED. */
	RECORD_PAYLOAD_LEN = 1024,
	/* Most netconsole ports configured at once (a sanity bound of the
	 * configuration: the port table, struct port_bits, holds any). */
	PORTS_MAX = 64,
	/* Most patterns in the table. */
	PATTERNS_MAX = 1024,
	/* Sources tracked for context bursts (LRU: the oldest are forgotten). */
	BURSTS_MAX = 100000,
	/* Most addresses in the table of this host's own (local_addrs). */
	LOCAL_ADDRS_MAX = 65536,
	/* IPv6 extension headers walked before giving up on a packet. */
	IPV6_EXT_MAX = 8,
	/* Version of this contract: the record's layout and the maps'. It is
	 * in every record (struct record's version) and in the pinned state
	 * map (struct shared_state's version); Go replaces pinned maps of
	 * another version, and rejects records of another version. Raise it
	 * with every change to a struct or map here. Records of version 1
	 * (up to the end of 2026) had no version field: a zero there.
	 * 3: the port table a bitmap (struct port_bits), not a hash. */
	CONTRACT_VERSION = 3,
};

/* Why a line was forwarded, and what else is known about it. */
enum record_flags {
	RECORD_MATCH = 1 << 0,     /* the line matched pattern_id */
	RECORD_CONTEXT = 1 << 1,   /* the line is inside a context burst */
	RECORD_IPV6 = 1 << 2,      /* source is IPv6 (else IPv4-mapped) */
	RECORD_TRUNCATED = 1 << 3, /* payload longer than RECORD_PAYLOAD_LEN */
};

/* One forwarded netconsole line, as written to the ring buffer: the
 * fields, then len bytes of payload and no more (a record is sized to its
 * line: offsetof(struct record, payload) + len bytes). */
struct record {
	__u8 saddr[16];     /* source address; IPv4 as ::ffff:a.b.c.d */
	__u64 time_ns;      /* bpf_ktime_get_coarse_ns() at receive (CLOCK_MONOTONIC_COARSE: CLOCK_MONOTONIC as of the last tick) */
	__u32 ifindex;      /* interface the packet arrived on */
	__u16 sport;        /* UDP source port, host byte order */
	__u16 dport;        /* UDP destination port, host byte order */
	__u16 len;          /* bytes of payload[] that hold data */
	__u16 wire_len;     /* UDP payload length on the wire (>= len) */
	__u32 pattern_id;   /* pattern matched (RECORD_MATCH), else 0 */
	__u8 flags;         /* enum record_flags */
	__u8 version;       /* CONTRACT_VERSION */
	__u8 _pad[2];
	__u8 payload[RECORD_PAYLOAD_LEN]; /* only len bytes are sent */
};

/* Per-CPU packet counters, one field per verdict or event. Every packet
 * counts once in packets and once in exactly one of passed or dropped. */
struct packet_counters {
	__u64 packets;      /* packets the program saw */
	__u64 passed;       /* XDP_PASS verdicts */
	__u64 dropped;      /* XDP_DROP verdicts */
	__u64 malformed;    /* truncated or invalid headers (passed) */
	__u64 fragments;    /* IP fragments: no UDP header to judge (passed) */
	__u64 netconsole;   /* UDP datagrams to a netconsole port */
	__u64 matched;      /* lines that matched a pattern (forwarded) */
	__u64 context;      /* lines forwarded as context of a burst */
	__u64 ringbuf_full; /* lines to forward that found no room (passed) */
	__u64 truncated;    /* forwarded lines cut to RECORD_PAYLOAD_LEN */
	__u64 bursts;       /* context bursts opened or extended by a match */
	__u64 long_header;  /* netconsole lines whose header does not end
			     * within HEADER_SCAN_LEN: matched against
			     * nothing, passed (unless forwarded as context) */
	__u64 not_local;    /* UDP to a netconsole port but to an address
			     * not this host's (local_only): passed, not
			     * judged (a router's, a gateway's traffic) */
};

/* Key of the pattern table (BPF_MAP_TYPE_LPM_TRIE). prefixlen is in bits:
 * a pattern is stored with 8 * its length, a lookup uses 8 * the number of
 * text bytes copied, so a pattern matches only a text it is a prefix of. */
struct pattern_key {
	__u32 prefixlen;
	__u8 data[PATTERN_MAX_LEN];
};

/* Value of the pattern table: the id Go gave the pattern (never 0). */
struct pattern_value {
	__u32 id;
};

/* The first bytes of the patterns in the table: bit c of bits[c / 64] is
 * set when some pattern starts with byte c. A text whose first byte has
 * no bit set cannot match: the trie is not looked up (most ordinary
 * lines). Go sets a byte's bit before a pattern with it enters the trie,
 * and clears it only after the last such pattern left. */
struct first_bytes {
	__u64 bits[4];
};

/* The netconsole ports: bit p % 64 of bits[p / 64] is set when UDP
 * destination port p is one (8 KiB, every port). Go writes the union of
 * the old and the new ports before the new ones alone, so a port kept
 * across a change is never missing, even to a reader that sees the copy
 * half done. */
struct port_bits {
	__u64 bits[1024];
};

/* Key of the burst table: the source address, IPv4 as ::ffff:a.b.c.d. */
struct burst_key {
	__u8 addr[16];
};

/* Value of the burst table: one source's open context burst. */
struct burst {
	__s32 remaining;    /* context lines still to forward; <= 0: none */
	__u32 _pad;
	__u64 expires_ns;   /* coarse monotonic time after which it is closed */
};

/* Program-wide state shared by all CPUs (a one-entry array). */
struct shared_state {
	/* Coarse monotonic time of the last match from any source, or 0.
	 * Once now >= last_match_ns + burst_timeout_ns no burst can be open:
	 * the first line to see that sets it to 0 (compare-and-swap, so a
	 * newer match's time stays), and while it is 0 ordinary lines skip
	 * the clock and the burst table altogether. */
	__u64 last_match_ns;
	/* CONTRACT_VERSION of the program that made the maps: written by Go
	 * when it creates them, checked when it finds them pinned. */
	__u32 version;
	__u32 _pad;
};

#endif /* LASTGASP_H */
