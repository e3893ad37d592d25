//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * lastgasp.c: the XDP netconsole filter.
 *
 * A collector hears every console line of a fleet, one UDP datagram a line.
 * This program keeps the few that matter and throws the rest away before the
 * network stack ever sees them:
 *
 *   packet ─ Ethernet, VLAN ─ IPv4 / IPv6 ─ UDP to a netconsole port?
 *     no  ─────────────────────────────────────────────────► XDP_PASS
 *     yes, but to an address not this host's (local_only) ──► XDP_PASS
 *     yes ─ message text starts with a pattern?  (LPM trie)
 *             yes ─ record MATCH, open the source's context burst
 *             no  ─ burst open for this source?  (LRU hash)
 *                     yes ─ record CONTEXT
 *                     no, and the header had no end in the window
 *                         (long_header) ─────────────────► XDP_PASS
 *           ─ verdict: XDP_DROP, or XDP_PASS if forward_pass is set
 *
 * Default verdict is XDP_PASS: what we do not understand goes up the stack.
 * Records go to a ring buffer for userspace; every verdict and event is
 * counted in a per-CPU struct packet_counters.
 */
#include "parsing.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Load-time configuration, set from Go before the program is loaded
 * (spec.Variables). The verifier prunes what they switch off. */

/* Most lines a burst forwards after the match that opened or extended it
 * (0: no bursts). A kernel report (an Oops: registers, the trace, the
 * modules) runs on well past 20 lines; the burst stays open until the
 * report's end marker, this bound, or burst_timeout_ns, whichever comes
 * first. */
volatile const __u32 burst_lines = 256;
/* Lines still forwarded after the end marker ("---[ end trace ...",
 * "---[ end Kernel panic ..."): what the kernel prints after a report
 * (an Oops prints its registers again, then panics). */
volatile const __u32 context_lines = 20;
/* A burst closes this long after the match that opened or extended it,
 * even if it has lines left: a dead node's burst never finishes by count. */
volatile const __u64 burst_timeout_ns = 10ULL * 1000 * 1000 * 1000;
/* 1: netconsole packets go on up the stack after we handled them (so a
 * syslog receiver on this host still gets every line); 0: dropped. */
volatile const __u8 forward_pass = 0;
/* 1: only datagrams to one of this host's addresses (local_addrs), or to
 * a broadcast or multicast address, are netconsole lines; others pass, to
 * be routed on, counted in not_local. 0: the destination address is not
 * looked at (an offline scan of a capture). */
volatile const __u8 local_only = 0;
/* Context records are written without waking the reader, which polls; once
 * this many bytes wait in the ring buffer, the next one wakes it. */
volatile const __u32 wake_bytes = 1 << 20;

/* Netconsole ports (struct port_bits), a single entry (index 0). Every
 * UDP packet looks it up: a one-entry array, whose lookup the verifier
 * turns into a few instructions, and not a hash of ports, whose lookup
 * hashes the key and walks a bucket (issue 12: about 5 ns a packet). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct port_bits);
} ports SEC(".maps");

/* This host's addresses (IPv4 as ::ffff:a.b.c.d), and its interfaces'
 * broadcast addresses: key the address, value unused. Go fills it from
 * the kernel's address list and keeps it current (package localaddr). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, LOCAL_ADDRS_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct burst_key);
	__type(value, __u8);
} local_addrs SEC(".maps");

/* Pattern table: key the first bytes of the message text with a length in
 * bits, value the id of the longest stored pattern that prefixes them. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, PATTERNS_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct pattern_key);
	__type(value, struct pattern_value);
} patterns SEC(".maps");

/* The first bytes of the patterns (struct first_bytes), a single entry
 * (index 0). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct first_bytes);
} pattern_first_bytes SEC(".maps");

/* Context bursts: key a source address, value its open burst. LRU, so a
 * flood of sources forgets the oldest bursts instead of failing. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, BURSTS_MAX);
	__type(key, struct burst_key);
	__type(value, struct burst);
} bursts SEC(".maps");

/* Program-wide state, a single entry (index 0). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct shared_state);
} state SEC(".maps");

/* Counters, a single per-CPU entry (index 0); Go sums the CPUs. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct packet_counters);
} counters SEC(".maps");

/* Where a record is built before it is copied into the ring buffer at
 * the length of its line (a single per-CPU entry, index 0): an XDP
 * program runs to its end on one CPU, so no other line shares it. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct record);
} scratch SEC(".maps");

/* Forwarded lines (struct record). Its size is set from Go. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 16 << 20);
} events SEC(".maps");

/* Force bpf2go to emit Go twins of the contract types. */
const struct port_bits *unused_port_bits __attribute__((unused));
const enum limits *unused_limits __attribute__((unused));
const enum record_flags *unused_flags __attribute__((unused));
const struct record *unused_record __attribute__((unused));

/* One netconsole datagram under judgement. */
struct line {
	struct burst_key src;
	__u16 sport, dport;   /* host order */
	__u32 off, len;       /* UDP payload: offset from data, length */
	__u8 flags;           /* RECORD_IPV6 or 0 */
};

/* The header window is read into a buffer of this size (a power of two, so
 * that masking an index keeps every read inside it, whatever the verifier
 * knows of the index). */
#define HEAD_BUF_LEN 256
_Static_assert(HEAD_BUF_LEN >= HEADER_SCAN_LEN, "header window too small");

/* The header window, as find_text receives it: a struct, so that the
 * function's BTF gives the verifier the size of the memory behind the
 * pointer; bytes, or the same bytes as 8-byte words (b[8k..8k+7] is w[k],
 * least significant byte first). */
struct head_buf {
	union {
		__u8 b[HEAD_BUF_LEN];
		__u64 w[HEAD_BUF_LEN / 8];
	};
};
_Static_assert(HEADER_SCAN_LEN % 8 == 0, "header window: whole words");
_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
	       "first_of reads the lowest byte of a word as the first");

/* Where the header window is read for find_text (a single per-CPU entry,
 * index 0), not on the stack: the verifier allows 512 bytes of stack for
 * the program and the functions it calls together, and the window alone
 * is 256 (TestStackBudget). An XDP program runs to its end on one CPU, so
 * no other line shares it. Only lines quick_ordinary leaves use it. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct head_buf);
} head_scratch SEC(".maps");

static __always_inline __u8 head_at(const struct head_buf *head, __u32 i)
{
	return head->b[i & (HEAD_BUF_LEN - 1)];
}

/*
 * head_word - the @k-th 8-byte word of the window. The index is masked,
 * as head_at's is, and barrier_var keeps the compiler from turning it
 * into a pointer stepped along the loop, whose bound the verifier would
 * not know.
 */
static __always_inline __u64 head_word(const struct head_buf *head, __u32 k)
{
	barrier_var(k);
	return head->w[k & (HEAD_BUF_LEN / 8 - 1)];
}

/* find_text's answer when the text cannot be found (never an offset). */
#define TEXT_UNKNOWN 0xffffffffU

/* first_of's answer when no byte is found (never an offset). */
#define NOT_FOUND 0xffffffffU

#define BYTES_01 0x0101010101010101ULL
#define BYTES_7F 0x7f7f7f7f7f7f7f7fULL

/*
 * zero_bytes - the top bit (0x80) of every byte of @x that is zero, and no
 * other bit. Exact for every byte (no carry crosses a byte: a byte's low
 * seven bits plus 0x7f reach 0x80 exactly when one of them is set), so
 * bits may be masked off after it.
 */
static __always_inline __u64 zero_bytes(__u64 x)
{
	return ~(((x & BYTES_7F) + BYTES_7F) | x | BYTES_7F);
}

/*
 * lowest_byte - index (0..7) of the lowest byte whose top bit is set in
 * @m (m != 0, only top bits set). m & -m keeps that bit, 8i + 7; shifted
 * down it is 1 << 8i, and multiplying by 0x0001020304050607 shifts that
 * constant left by i bytes, which brings its byte 7 - i, whose value is
 * i, to the top. (BPF has no count-trailing-zeros instruction.)
 */
static __always_inline __u32 lowest_byte(__u64 m)
{
	return (((m & -m) >> 7) * 0x0001020304050607ULL) >> 56;
}

/*
 * word_hits - the top bit of each byte of @x, the window's bytes @base to
 * @base + 7, that is the byte @rep1 or @rep2 repeats, bytes before @from
 * and from @to on masked off (@from < @base + 8, @base < @to). A word XOR
 * the wanted byte repeated has a zero byte where the wanted byte is.
 */
static __always_inline __u64 word_hits(__u64 x, __u64 rep1, __u64 rep2,
				       __u32 base, __u32 from, __u32 to)
{
	__u64 m = zero_bytes(x ^ rep1) | zero_bytes(x ^ rep2);

	if (from > base)	/* 1..7 bytes of this word come before @from */
		m &= ~0ULL << ((from - base) * 8);
	if (to - base < 8)	/* 1..7 bytes of this word come before @to */
		m &= (1ULL << ((to - base) * 8)) - 1;
	return m;
}

/*
 * first_of_far - offset of the first byte in [@from, @to) of @head that
 * is @c1 or @c2, or NOT_FOUND. @to <= HEADER_SCAN_LEN.
 *
 * Eight bytes a step (word_hits): the word holding @from, then the ones
 * after it, while they start before @to. At most HEADER_SCAN_LEN / 8 = 20
 * steps.
 *
 * A global (non-static, never inlined) function, for the verifier's sake:
 * it verifies a global function once, on its own, with its arguments
 * unknown, and the caller sees only "a scalar" come back. Inlined, each
 * step's answer was a state of its own carried through the second search
 * of find_text and everything after it: the verifier gave up at
 * 1,000,000 instructions (TestVerifierBudget).
 */
__attribute__((noinline)) __u32 first_of_far(const struct head_buf *head,
					     __u32 from, __u32 to, __u32 c1,
					     __u32 c2)
{
	__u64 rep1 = BYTES_01 * (__u8)c1, rep2 = BYTES_01 * (__u8)c2;

	if (!head)
		return NOT_FOUND;

	for (__u32 k = from / 8; k < HEADER_SCAN_LEN / 8; k++) {
		__u32 base = k * 8;
		__u64 m;

		if (base >= to)
			break;
		m = word_hits(head_word(head, k), rep1, rep2, base, from, to);
		if (m)
			return base + lowest_byte(m);
	}
	return NOT_FOUND;
}

/* Words of the window first_of looks at itself before it calls
 * first_of_far: the first 32 bytes hold a printk time "[...]" group
 * (BRACKET_MAX_LEN) and the extended header of a kernel without
 * netconsole's release prepend, "<level>,<seq>,<usec>,<flag>;". */
#define NEAR_WORDS 4
_Static_assert(NEAR_WORDS * 8 == BRACKET_MAX_LEN, "the first group is near");

/* near_first's answer when @to reaches past the near words and nothing
 * was found in them (never an offset). */
#define FURTHER 0xfffffffeU

/*
 * near_first - first_of_far's answer within the NEAR_WORDS words at @w,
 * looked at inline (unrolled, no call): NOT_FOUND if nothing is found
 * before @to, FURTHER if nothing is found in them but @to lies past them.
 * @w is the header window's words, or the payload's first bytes read in
 * place (quick_ordinary). Each word's exit is one verifier state more,
 * not one a byte.
 */
static __always_inline __u32 near_first(const __u64 *w, __u32 from, __u32 to,
					__u8 c1, __u8 c2)
{
	__u64 rep1 = BYTES_01 * c1, rep2 = BYTES_01 * c2;

#pragma unroll
	for (int k = 0; k < NEAR_WORDS; k++) {
		__u32 base = k * 8;
		__u64 m;

		if (base >= to)
			return NOT_FOUND;
		if (from >= base + 8)
			continue;	/* the whole word comes before @from */
		m = word_hits(w[k], rep1, rep2, base, from, to);
		if (m)
			return base + lowest_byte(m);
	}
	return to <= NEAR_WORDS * 8 ? NOT_FOUND : FURTHER;
}

/*
 * first_of - first_of_far's answer, the first NEAR_WORDS words looked at
 * inline: most lines' headers end there, and a call and a loop cost
 * about as much as the rest of an ordinary line's judgement (issue 12).
 */
static __always_inline __u32 first_of(const struct head_buf *head, __u32 from,
				      __u32 to, __u8 c1, __u8 c2)
{
	__u32 at = near_first(head->w, from, to, c1, c2);

	if (at != FURTHER)
		return at;
	return first_of_far(head, from > NEAR_WORDS * 8 ? from : NEAR_WORDS * 8,
			    to, c1, c2);
}

/*
 * find_text - offset of the message text in a netconsole payload.
 * @head: the first @n bytes of the payload, n <= HEADER_SCAN_LEN.
 *
 * Extended format, "<level>,<seq>,<usec>,<flag>[,...];text": the payload
 * starts with a digit and holds a ';' within the window with no space
 * before it (a header never has one); the text starts after the ';'.
 * Basic format, "[    3.053091] text": up to two "[...]" groups, each at
 * most BRACKET_MAX_LEN bytes with its brackets (the printk time, then the
 * caller id of CONFIG_PRINTK_CALLER), then one space, are skipped. A '['
 * without its ']' in reach is text.
 * Anything else: the text starts at 0.
 * A payload that starts with a digit and has neither ';' nor ' ' in all
 * of its first HEADER_SCAN_LEN bytes is a header too long to find the end
 * of (or no header at all: we cannot tell): TEXT_UNKNOWN.
 * The Go matcher (package pattern) implements the same rules; a
 * differential fuzz test holds the two together.
 *
 * A global (non-static, never inlined) function, for the verifier's sake:
 * it verifies a global function once, on its own, with @n unknown, and
 * the caller sees only "a scalar" come back. Inlined, every offset the
 * bracket scan can return (a pair of ']' positions) was a distinct state
 * carried through the key length, the trie lookup, the burst and the ring
 * buffer code after it: about 560,000 instructions verified of the
 * kernel's 1,000,000 (TestVerifierBudget). The call costs a few ns.
 * Return: the offset, <= @n, or TEXT_UNKNOWN; 0 if @head is NULL (a global
 * function's pointer argument may be NULL as far as the verifier knows).
 */
__attribute__((noinline)) __u32 find_text(const struct head_buf *head, __u32 n)
{
	__u32 off = 0;
	__u8 c;

	if (!head || n == 0)
		return 0;
	if (n > HEADER_SCAN_LEN)
		n = HEADER_SCAN_LEN;
	c = head_at(head, 0);
	if (c >= '0' && c <= '9') {
		__u32 end = first_of(head, 1, n, ';', ' ');

		if (end == NOT_FOUND)
			return n == HEADER_SCAN_LEN ? TEXT_UNKNOWN : 0;
		return head_at(head, end) == ';' ? end + 1 : 0;
	}

	for (int group = 0; group < 2; group++) {
		__u32 close;

		if (off >= n || head_at(head, off) != '[')
			break;
		close = first_of(head, off + 1, off + BRACKET_MAX_LEN < n ?
					       off + BRACKET_MAX_LEN : n,
				 ']', ']');
		if (close == NOT_FOUND)
			break;
		off = close + 1;
	}
	if (off > 0 && off < n && head_at(head, off) == ' ')
		off++;
	return off;
}

/*
 * copy_size - @n, which the caller knows is 1..@max, in a form in which
 * the verifier sees it too. @max is a power of two.
 *
 * bpf_xdp_load_bytes takes no empty copy (ARG_CONST_SIZE): the verifier
 * must know the size's minimum is at least 1. It does not relate two
 * unknown values (text < l->len), and a verifier before about 6.8 does not
 * raise a minimum of 0 to 1 on a "!= 0" test either: Debian's 6.1 rejected
 * the program ("R3 min value is outside of the allowed memory range", size
 * 0). ((n - 1) & (max - 1)) + 1 is n for n in 1..max, and every verifier
 * computes its range as 1..max. barrier_var keeps the compiler, which can
 * see that the mask changes nothing, from folding it away.
 */
static __always_inline __u32 copy_size(__u32 n, __u32 max)
{
	n -= 1;
	barrier_var(n);
	return (n & (max - 1)) + 1;
}
_Static_assert((PATTERN_MAX_LEN & (PATTERN_MAX_LEN - 1)) == 0, "PATTERN_MAX_LEN: a power of two");
_Static_assert((RECORD_PAYLOAD_LEN & (RECORD_PAYLOAD_LEN - 1)) == 0, "RECORD_PAYLOAD_LEN: a power of two");

/* The text that starts the kernel's end marker of a report: "---[ end
 * trace 0000000000000000 ]---" after an Oops, a BUG or a WARN, "---[ end
 * Kernel panic - not syncing: ... ]---" after a panic. */
#define END_MARKER "---[ end "
#define END_MARKER_LEN (sizeof(END_MARKER) - 1)
_Static_assert(END_MARKER_LEN <= PATTERN_MAX_LEN, "end marker longer than a key");

/*
 * is_end_marker - 1 if the key's text starts with END_MARKER, else 0.
 *
 * Without a branch: the differences of the END_MARKER_LEN bytes are OR-ed
 * together and the answer computed from the sum. A branch a byte made the
 * verifier carry each outcome (and what it had learnt of each byte)
 * through everything after it: 129,000 instructions verified became
 * 348,000 (TestVerifierBudget). The bytes past klen are zero in the key,
 * never a '-' or a ' ' of the marker, so klen need not be tested.
 */
static __always_inline __u32 is_end_marker(const struct pattern_key *key)
{
	const char m[] = END_MARKER;
	__u64 diff = 0;

#pragma unroll
	for (int i = 0; i < END_MARKER_LEN; i++)
		diff |= key->data[i] ^ (__u8)m[i];
	/* diff is 0..255: diff - 1 wraps to all ones only for 0. */
	return (diff - 1) >> 63;
}

/* starts_pattern - whether some pattern of the table starts with byte @c. */
static __always_inline int starts_pattern(const struct first_bytes *fb, __u8 c)
{
	return (fb->bits[c >> 6] >> (c & 63)) & 1;
}

/*
 * passed_over - whether a text that starts with byte @c is certainly an
 * ordinary line's: no pattern starts with @c, and it is not the end
 * marker's '-'. Most lines end on this test (issue 12).
 */
static __always_inline int passed_over(const struct first_bytes *fb, __u8 c)
{
	return c != (__u8)END_MARKER[0] && !starts_pattern(fb, c);
}

/*
 * near_byte - the byte at @i (< NEAR_WORDS * 8) of the words at @w. Each
 * word is read at a constant offset: @w may point into the packet, and the
 * verifier knows the bytes behind a packet pointer only at the offsets it
 * was tested with (a pointer with a variable index added has lost them).
 */
static __always_inline __u8 near_byte(const __u64 *w, __u32 i)
{
	__u32 k = i / 8;
	__u64 x;

	barrier_var(k);
	if (k == 0)
		x = w[0];
	else if (k == 1)
		x = w[1];
	else if (k == 2)
		x = w[2];
	else
		x = w[3];
	return x >> (i % 8 * 8);
}
_Static_assert(NEAR_WORDS == 4, "near_byte reads four words");

/*
 * quick_ordinary - 1 if the line is certainly one match_line passes over
 * on its first text byte (or a header with no text after it), judged on
 * the first NEAR_WORDS * 8 bytes of the payload, read in place (@w; @n
 * the window's length as in match_line, @len the payload's: bytes of @w
 * from @n on may be padding or a trailer, never looked at); 0 if unsure.
 *
 * find_text's rules, where they decide within these bytes: an extended
 * header's ';' (or the space that makes it no header) found in them; a
 * basic line's first "[...]" group (BRACKET_MAX_LEN, so always within
 * them) and the byte after it, if not a second group's '['. Then the text's
 * first byte, if among them, that starts no pattern and no end marker.
 * Anything else (a header that ends further on, a second group, a text
 * that starts past them, a byte that may match) is left to match_line's
 * whole judgement: this only saves it the copy of the header window and
 * the call of find_text for most lines (about 5 ns of an ordinary line's
 * ~23, issue 12). FuzzKernelMatchesGo holds both against package pattern.
 */
static __always_inline int quick_ordinary(const __u64 *w, __u32 n, __u32 len,
					  const struct first_bytes *fb)
{
	__u32 text = 0, at;
	__u8 c = near_byte(w, 0);

	if (c >= '0' && c <= '9') {
		at = near_first(w, 1, n, ';', ' ');
		if (at == FURTHER)
			return 0; /* the header may end further on */
		if (at != NOT_FOUND && near_byte(w, at) == ';')
			text = at + 1;
	} else if (c == '[') {
		at = near_first(w, 1, n < BRACKET_MAX_LEN ? n : BRACKET_MAX_LEN,
				']', ']');
		if (at != NOT_FOUND) {
			text = at + 1;
			if (text >= NEAR_WORDS * 8)
				return 0;
			if (text < n) {
				c = near_byte(w, text);
				if (c == '[')
					return 0; /* a second group */
				if (c == ' ')
					text++;
			}
		}
	}
	if (text >= len)
		return 1; /* a header with no text after it */
	if (text >= n || text >= NEAR_WORDS * 8)
		return 0;
	return passed_over(fb, near_byte(w, text));
}

/* Payload offsets quick_ordinary is tried at: any frame's first buffer
 * (a mask, 2^n - 1; 0x7fff + 32 stays within the 0xffff the verifier
 * tracks packet offsets to). */
#define QUICK_OFF_MAX 0x7fff

/*
 * match_line - id of the longest pattern that prefixes the line's text.
 * @unknown: set when the text cannot be found (find_text's TEXT_UNKNOWN).
 * @end: set when the text starts with END_MARKER.
 * Return: the pattern id, or 0 for no match (or an empty text, or an
 * unknown one).
 */
static __always_inline __u32 match_line(struct xdp_md *ctx,
					const struct line *l, int *unknown,
					int *end)
{
	struct head_buf *head;
	struct pattern_key key;
	struct pattern_value *val;
	struct first_bytes *fb;
	__u32 n, off, text, klen, zero = 0;

	n = l->len < HEADER_SCAN_LEN ? l->len : HEADER_SCAN_LEN;
	if (n == 0)
		return 0; /* an empty datagram has no text */
	fb = bpf_map_lookup_elem(&pattern_first_bytes, &zero);
	off = l->off;
	if (fb && off <= QUICK_OFF_MAX) {
		/* The payload's first bytes, where they are in the frame's
		 * first buffer. The offset is masked (a no-op, after the test;
		 * barrier_var keeps the compiler from dropping it) where the
		 * pointer is made: Debian's 6.1 verifier learnt nothing from
		 * the test, made on a copy the compiler had spilled, and none
		 * learns the bytes behind a packet pointer that may pass
		 * 0xffff. */
		void *data = (void *)(long)ctx->data;
		void *data_end = (void *)(long)ctx->data_end;
		const __u64 *w;

		barrier_var(off);
		w = data + (off & QUICK_OFF_MAX);

		if ((void *)(w + NEAR_WORDS) <= data_end &&
		    quick_ordinary(w, n, l->len, fb))
			return 0;
	}
	head = bpf_map_lookup_elem(&head_scratch, &zero);
	if (!head)
		return 0; /* cannot happen: index 0 always exists */
	if (bpf_xdp_load_bytes(ctx, l->off, head->b, copy_size(n, HEAD_BUF_LEN)) < 0)
		return 0; /* cannot happen: the UDP length was checked */
	text = find_text(head, n);
	if (text == TEXT_UNKNOWN) {
		*unknown = 1;
		return 0;
	}
	if (text >= l->len)
		return 0; /* a header with no text after it */
	/* The lines quick_ordinary left end here as most lines do there, on
	 * their first text byte when it is in the window (text < n): no
	 * pattern starts with it and it is not the end marker's '-'. They
	 * read no key: no second bpf_xdp_load_bytes, no end-marker test
	 * (issue 12). */
	if (fb && text < n && passed_over(fb, head_at(head, text)))
		return 0; /* no pattern starts with this byte */
	/* Zeroed here, not where declared, so that the lines above skip it.
	 * The trie compares only prefixlen bits, but the end-marker test
	 * reads bytes past klen, and the verifier wants the key initialised. */
	__builtin_memset(&key, 0, sizeof(key));
	klen = l->len - text;
	if (klen > PATTERN_MAX_LEN)
		klen = PATTERN_MAX_LEN;
	/* 1..PATTERN_MAX_LEN, since text < l->len; shown to the verifier. */
	klen = copy_size(klen, PATTERN_MAX_LEN);
	if (bpf_xdp_load_bytes(ctx, l->off + text, key.data, klen) < 0)
		return 0; /* cannot happen, as above */
	key.prefixlen = klen * 8;
	*end = is_end_marker(&key);
	if (fb && !starts_pattern(fb, key.data[0]))
		return 0; /* an end marker's '-', or a text past the window */
	val = bpf_map_lookup_elem(&patterns, &key);
	return val ? val->id : 0;
}

/*
 * open_burst - start (or restart, on a match within one) @src's burst:
 * burst_lines lines, or only context_lines if the match is itself an end
 * marker (@end: "---[ end Kernel panic").
 */
static __always_inline void open_burst(struct packet_counters *cnt,
				       const struct burst_key *src, __u64 now,
				       int end)
{
	struct burst b = {
		.remaining = end ? context_lines : burst_lines,
		.expires_ns = now + burst_timeout_ns,
	};
	__u32 zero = 0;
	struct shared_state *st;
	struct burst *open;

	if (burst_lines == 0)
		return;
	/* A source that has a burst (open or closed) gets it restarted in
	 * place: an update with BPF_ANY allocates a new LRU element and frees
	 * the old one, about 130 ns of the 300 a match cost. The two stores
	 * are not one atomic step: a line of this source taken on another
	 * CPU meanwhile is at worst counted against the old burst. */
	open = bpf_map_lookup_elem(&bursts, src);
	if (open) {
		open->expires_ns = b.expires_ns;
		open->remaining = b.remaining;
	} else {
		/* May fail only under memory pressure; the match is kept. */
		bpf_map_update_elem(&bursts, src, &b, BPF_ANY);
	}
	st = bpf_map_lookup_elem(&state, &zero);
	if (st)
		st->last_match_ns = now;
	cnt->bursts++;
}

/*
 * take_context - whether a line from @src is context of an open burst, and
 * if so take one line off the burst.
 * @now: set to the coarse clock when it was read (always when the line
 * is context).
 * @end: the line is an end marker: the burst keeps at most context_lines
 * more lines.
 * @last: set when this is the burst's final line.
 */
static __always_inline int take_context(const struct burst_key *src,
					int end, int *last, __u64 *now)
{
	__u32 zero = 0;
	struct shared_state *st;
	struct burst *b;
	__u64 seen;
	__s32 before;

	if (burst_lines == 0)
		return 0;
	st = bpf_map_lookup_elem(&state, &zero);
	if (!st)
		return 0; /* cannot happen: index 0 always exists */
	/* Fast path, without reading the clock (about 3 ns of an ordinary
	 * line's ~30, issue 12): no match since a line found the last one's
	 * burst timeout passed and cleared the mark. */
	seen = *(volatile __u64 *)&st->last_match_ns;
	if (seen == 0)
		return 0;
	*now = bpf_ktime_get_coarse_ns();
	if (*now >= seen + burst_timeout_ns) {
		/* Every burst has expired: clear the mark, so that the lines
		 * after this one take the fast path. Compare-and-swap: a
		 * match on another CPU since seen was read has written its
		 * own time, which must stay. */
		__sync_val_compare_and_swap(&st->last_match_ns, seen, 0);
		return 0;
	}
	b = bpf_map_lookup_elem(&bursts, src);
	if (!b || *now >= b->expires_ns)
		return 0;
	/* Atomic: lines of one source may arrive on several CPUs. Once at
	 * zero the count goes negative, which reads as closed. */
	before = __sync_fetch_and_add(&b->remaining, -1);
	if (before <= 0)
		return 0;
	*last = before == 1;
	if (end && before - 1 > (__s32)context_lines) {
		/* Not atomic with the decrement above: a line of this source
		 * taken on another CPU meanwhile is lost from the count, so
		 * the tail is at worst a line short or long. */
		b->remaining = context_lines;
		*last = context_lines == 0;
	}
	return 1;
}

/* Bytes of a record before its payload. */
#define RECORD_HEAD_LEN __builtin_offsetof(struct record, payload)

/*
 * forward - write the line to the ring buffer, sized to it.
 *
 * The record is built in the CPU's scratch entry, then copied with
 * bpf_ringbuf_output at RECORD_HEAD_LEN + len bytes: a 60-byte line takes
 * 112 bytes of the ring (and the kernel's 8-byte header), not the 1,072
 * of a whole struct record, so a 16 MiB ring holds about nine times as
 * many lines (bench/README.md). bpf_ringbuf_reserve would need a size
 * known when the program is verified.
 * Return: 0, or -1 if the ring buffer is full (counted).
 */
static __always_inline int forward(struct xdp_md *ctx, struct packet_counters *cnt,
				   const struct line *l, __u8 flags, __u32 id,
				   __u64 wake, __u64 now)
{
	__u32 zero = 0, n = l->len;
	struct record *rec;

	rec = bpf_map_lookup_elem(&scratch, &zero);
	if (!rec)
		return -1; /* cannot happen: index 0 always exists */
	if (n > RECORD_PAYLOAD_LEN) {
		n = RECORD_PAYLOAD_LEN;
		flags |= RECORD_TRUNCATED;
	}
	if (n > 0 && bpf_xdp_load_bytes(ctx, l->off, rec->payload,
					copy_size(n, RECORD_PAYLOAD_LEN)) < 0)
		return -1; /* cannot happen: the UDP length was checked */
	__builtin_memcpy(rec->saddr, l->src.addr, sizeof(rec->saddr));
	/* now, read by the caller: the coarse clock (5.11+),
	 * CLOCK_MONOTONIC_COARSE as of the last tick, so up to one jiffy
	 * (1-10 ms) behind. Every time Go derives
	 * from it is a window of seconds (settle, quiet, dedup) or a wall
	 * time to the millisecond; the exact clock costs about 45 ns of a
	 * match's ~285 on kvm-clock (bench/README, issue 12). */
	rec->time_ns = now;
	rec->ifindex = ctx->ingress_ifindex;
	rec->sport = l->sport;
	rec->dport = l->dport;
	rec->len = n;
	rec->wire_len = l->len;
	rec->pattern_id = id;
	rec->flags = flags | l->flags;
	rec->version = CONTRACT_VERSION;
	rec->_pad[0] = 0;
	rec->_pad[1] = 0;
	/* n <= RECORD_PAYLOAD_LEN already; said again where the verifier
	 * sees it, so that it knows the copy stays inside the scratch entry. */
	barrier_var(n);
	if (n > RECORD_PAYLOAD_LEN)
		return -1;
	if (bpf_ringbuf_output(&events, rec, RECORD_HEAD_LEN + n, wake) < 0) {
		cnt->ringbuf_full++;
		return -1;
	}
	if (flags & RECORD_TRUNCATED)
		cnt->truncated++;
	return 0;
}

/* judge_line - match, burst and forward one netconsole line. */
static __always_inline int judge_line(struct xdp_md *ctx, struct packet_counters *cnt,
				      const struct line *l)
{
	int handled = forward_pass ? XDP_PASS : XDP_DROP;
	int last = 0, unknown = 0, end = 0;
	__u64 now = 0;
	__u32 id = match_line(ctx, l, &unknown, &end);
	__u64 wake;
	__u8 flags;

	if (unknown)
		cnt->long_header++;

	if (id) {
		cnt->matched++;
		now = bpf_ktime_get_coarse_ns();
		open_burst(cnt, &l->src, now, end);
		flags = RECORD_MATCH;
		/* Adaptive: wakes the reader if it has read everything before
		 * this record (it is asleep), not otherwise (it is awake, or
		 * will poll the context lines before it within PollInterval).
		 * A forced wakeup costs about 5 us here: a storm of matches
		 * must not pay it for every line. */
		wake = 0;
	} else if (take_context(&l->src, end, &last, &now)) {
		cnt->context++;
		flags = RECORD_CONTEXT;
		wake = BPF_RB_NO_WAKEUP; /* the reader polls for these; the last
					  * of a burst, or a filling ring, wakes it */
		if (last || bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >=
				    wake_bytes)
			wake = BPF_RB_FORCE_WAKEUP;
	} else if (unknown) {
		/* A header too long for the window (or a line that only looks
		 * like one): it may be a panic we cannot see. Passed up the
		 * stack (the backstop socket, a syslog receiver), never
		 * dropped; counted above. */
		return XDP_PASS;
	} else {
		return handled; /* an ordinary line */
	}
	if (forward(ctx, cnt, l, flags, id, wake, now) < 0)
		return XDP_PASS; /* no room: a socket on this host may take it */
	return handled;
}

/*
 * addressed_here - whether @dst (IPv4 as ::ffff:a.b.c.d) is for this
 * host: one of its addresses, or a multicast address (IPv6 ff00::/8, IPv4
 * 224.0.0.0/4) or the IPv4 limited broadcast 255.255.255.255, which a
 * netconsole target may be set to. A subnet's broadcast address is in
 * local_addrs.
 */
static __always_inline int addressed_here(const struct burst_key *dst)
{
	const __u8 *a = dst->addr;
	int v4 = a[10] == 0xff && a[11] == 0xff &&
		 (a[0] | a[1] | a[2] | a[3] | a[4] | a[5] | a[6] | a[7] |
		  a[8] | a[9]) == 0;

	if (!v4 && a[0] == 0xff)
		return 1;
	if (v4 && ((a[12] & 0xf0) == 0xe0 ||
		   (a[12] & a[13] & a[14] & a[15]) == 0xff))
		return 1;
	return bpf_map_lookup_elem(&local_addrs, dst) != NULL;
}

/*
 * netconsole_port - whether UDP destination port @port (host order) is a
 * netconsole port: its bit in the port table.
 */
static __always_inline int netconsole_port(__u32 port)
{
	struct port_bits *p;
	__u32 zero = 0, word = port >> 6;

	p = bpf_map_lookup_elem(&ports, &zero);
	if (!p)
		return 0; /* cannot happen: index 0 always exists */
	/* port is 0..65535, so word 0..1023; said again where the verifier
	 * sees it (a verifier before about 6.3 forgets the bounds of a byte
	 * swap's result). */
	barrier_var(word);
	word &= 1023;
	return (p->bits[word] >> (port & 63)) & 1;
}

/* judge - the verdict for one packet. */
static __always_inline int judge(struct xdp_md *ctx, struct packet_counters *cnt)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct hdr_cursor nh = { .pos = data };
	struct line l = {};
	struct burst_key dst = {};
	struct udphdr *udp;
	__u32 l3_end = 0;
	int proto, res;

	proto = parse_ethhdr(&nh, data_end);
	if (proto < 0) {
		cnt->malformed++;
		return XDP_PASS; /* frame ends inside its Ethernet/VLAN headers */
	}
	if (proto == bpf_htons(ETH_P_IP)) {
		res = parse_iphdr(ctx, &nh, data, data_end, l.src.addr, dst.addr, &l3_end);
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		res = parse_ip6hdr(ctx, &nh, data, data_end, l.src.addr, dst.addr, &l3_end);
		l.flags = RECORD_IPV6;
	} else {
		return XDP_PASS; /* not IP: not ours */
	}
	switch (res) {
	case PARSE_UDP:
		break;
	case PARSE_FRAGMENT:
		cnt->fragments++;
		return XDP_PASS; /* the stack reassembles; we cannot judge it */
	case PARSE_MALFORMED:
		cnt->malformed++;
		return XDP_PASS; /* never misread: let the stack reject it */
	default:
		return XDP_PASS; /* another protocol: not ours */
	}
	udp = nh.pos;
	if (parse_udphdr(&nh, data, data_end, l3_end, &l.off, &l.len) !=
	    PARSE_UDP) {
		cnt->malformed++;
		return XDP_PASS; /* truncated UDP header, or a lying length */
	}
	/* parse_udphdr checked the header is in the packet; the verifier
	 * wants to see it for this pointer too. */
	if ((void *)(udp + 1) > data_end)
		return XDP_PASS;
	l.dport = bpf_ntohs(udp->dest);
	if (!netconsole_port(l.dport))
		return XDP_PASS; /* UDP, but not to a netconsole port */
	if (local_only && !addressed_here(&dst)) {
		cnt->not_local++;
		return XDP_PASS; /* routed through this host: not ours */
	}
	l.sport = bpf_ntohs(udp->source);
	cnt->netconsole++;
	return judge_line(ctx, cnt, &l);
}

/*
 * xdp.frags: the program takes multi-buffer frames. Drivers refuse native
 * XDP to a program without it when the MTU does not fit one buffer (veth,
 * mlx5, ice, i40e at a jumbo MTU), and ModeAuto would then fall back to
 * generic XDP. The program reads the payload with bpf_xdp_load_bytes,
 * which reads across fragments, and checks declared lengths against the
 * whole frame (pkt_has); headers are read in the first buffer. Linux 5.18
 * or later, as bpf_xdp_load_bytes already requires.
 */
SEC("xdp.frags")
int lastgasp_xdp(struct xdp_md *ctx)
{
	__u32 zero = 0;
	struct packet_counters *cnt;
	int verdict;

	cnt = bpf_map_lookup_elem(&counters, &zero);
	if (!cnt)
		return XDP_PASS; /* cannot happen: index 0 always exists */
	cnt->packets++;
	verdict = judge(ctx, cnt);
	if (verdict == XDP_DROP)
		cnt->dropped++;
	else
		cnt->passed++;
	return verdict;
}
