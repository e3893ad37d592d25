/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * parsing.h: bounds-checked header parsers for the XDP program.
 *
 * Every parser takes a cursor at the start of its header, checks that the
 * whole header lies before data_end before reading any field, and on success
 * moves the cursor to the header that follows. None of them trusts a length
 * field: each one is checked against the packet and against the length of
 * the layer that contains it. Multi-byte fields are in network byte order
 * unless a comment says otherwise.
 */
#ifndef LASTGASP_PARSING_H
#define LASTGASP_PARSING_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "lastgasp.h"

/* struct hdr_cursor - where the parse stands in the packet. */
struct hdr_cursor {
	void *pos;
};

/* struct vlan_hdr - an 802.1Q or 802.1ad tag, after the MAC addresses. */
struct vlan_hdr {
	__be16 tci;
	__be16 encapsulated_proto;
};

/* VLAN tags looked through: single tagged and QinQ frames. */
#define VLAN_MAX_DEPTH 2

/* IPv4 frag_off bits (host order): more fragments, and the offset mask. */
#define IP4_MF 0x2000
#define IP4_OFFSET 0x1fff

/*
 * pkt_has - whether the first @end bytes of the frame exist.
 * @linear: data_end - data, the bytes of the linear part.
 *
 * A program loaded as xdp.frags may see a multi-buffer frame (a jumbo
 * frame on a NIC with a 9000-byte MTU): data_end then ends the first
 * buffer, and the rest of the frame is in fragments, which
 * bpf_xdp_get_buff_len counts and bpf_xdp_load_bytes reads. The headers
 * are always read in the linear part (directly, bounds-checked against
 * data_end); only the lengths they declare are checked against the whole
 * frame. The helper is called only when the linear part is too short, so
 * an ordinary frame pays nothing for it.
 */
static __always_inline int pkt_has(struct xdp_md *ctx, __u32 linear, __u32 end)
{
	return end <= linear || end <= (__u32)bpf_xdp_get_buff_len(ctx);
}

/* What a network-layer parser found. */
enum parse_result {
	PARSE_UDP,       /* cursor is at a UDP header */
	PARSE_OTHER,     /* a well-formed packet of another protocol */
	PARSE_FRAGMENT,  /* an IP fragment: no UDP header to judge by */
	PARSE_MALFORMED, /* truncated, or a header field that cannot be */
};

/*
 * parse_ethhdr - Ethernet header and up to VLAN_MAX_DEPTH VLAN tags.
 *
 * Tags are 802.1Q (0x8100) or 802.1ad (0x88a8), in any order.
 * Return: the EtherType of what follows (network byte order, 0..0xffff),
 * or -1 if the frame ends inside its Ethernet or VLAN headers.
 */
static __always_inline int parse_ethhdr(struct hdr_cursor *nh, void *data_end)
{
	struct ethhdr *eth = nh->pos;
	__be16 proto;

	if ((void *)(eth + 1) > data_end)
		return -1;
	nh->pos = eth + 1;
	proto = eth->h_proto;

#pragma unroll
	for (int i = 0; i < VLAN_MAX_DEPTH; i++) {
		struct vlan_hdr *vh = nh->pos;

		if (proto != bpf_htons(ETH_P_8021Q) &&
		    proto != bpf_htons(ETH_P_8021AD))
			break;
		if ((void *)(vh + 1) > data_end)
			return -1;
		proto = vh->encapsulated_proto;
		nh->pos = vh + 1;
	}
	return proto;
}

/* set_v4_mapped - write IPv4 address @a as ::ffff:a.b.c.d into @out. */
static __always_inline void set_v4_mapped(__u8 out[16], __be32 a)
{
	__builtin_memset(out, 0, 10);
	out[10] = 0xff;
	out[11] = 0xff;
	__builtin_memcpy(&out[12], &a, 4);
}

/*
 * parse_iphdr - IPv4 header, options included.
 *
 * Checks, in this order: the 20 fixed bytes are in the packet; version is 4;
 * ihl (header length in 32-bit words) is at least 5; the whole header,
 * options included, is in the packet; tot_len covers the header and does
 * not reach past the packet, fragments included (pkt_has; bytes after
 * tot_len are Ethernet padding).
 * @saddr gets the IPv4-mapped source address, @daddr the destination's,
 * @l3_end the offset from @data
 * at which the datagram ends.
 * Return: PARSE_UDP (cursor at the UDP header), PARSE_OTHER, PARSE_FRAGMENT
 * (MF set or a non-zero offset) or PARSE_MALFORMED.
 */
static __always_inline int parse_iphdr(struct xdp_md *ctx, struct hdr_cursor *nh,
				       void *data, void *data_end, __u8 saddr[16],
				       __u8 daddr[16], __u32 *l3_end)
{
	struct iphdr *iph = nh->pos;
	__u32 hdr_len, tot_len, start;

	if ((void *)(iph + 1) > data_end)
		return PARSE_MALFORMED;
	if (iph->version != 4 || iph->ihl < 5)
		return PARSE_MALFORMED;
	hdr_len = iph->ihl * 4;	/* 20..60 */
	if (nh->pos + hdr_len > data_end)
		return PARSE_MALFORMED;
	start = nh->pos - data;
	tot_len = bpf_ntohs(iph->tot_len);
	if (tot_len < hdr_len ||
	    !pkt_has(ctx, (__u32)(data_end - data), start + tot_len))
		return PARSE_MALFORMED;

	set_v4_mapped(saddr, iph->saddr);
	set_v4_mapped(daddr, iph->daddr);
	*l3_end = start + tot_len;
	if (iph->frag_off & bpf_htons(IP4_MF | IP4_OFFSET))
		return PARSE_FRAGMENT;
	nh->pos += hdr_len;
	return iph->protocol == IPPROTO_UDP ? PARSE_UDP : PARSE_OTHER;
}

/* ipv6_is_ext - whether @nexthdr is an extension header we walk over. */
static __always_inline int ipv6_is_ext(__u8 nexthdr)
{
	return nexthdr == IPPROTO_HOPOPTS || nexthdr == IPPROTO_ROUTING ||
	       nexthdr == IPPROTO_DSTOPTS || nexthdr == IPPROTO_AH ||
	       nexthdr == IPPROTO_FRAGMENT;
}

/*
 * parse_ip6hdr - IPv6 header and its extension headers.
 *
 * Checks: the 40 fixed bytes are in the packet; version is 6; payload_len
 * (0 only for jumbograms, which netconsole never sends) reaches no further
 * than the packet, fragments included (pkt_has). Then walks at most IPV6_EXT_MAX extension headers:
 * hop-by-hop, routing and destination options ((hdrlen + 1) * 8 bytes) and
 * authentication ((hdrlen + 2) * 4 bytes), each bounds-checked. A fragment
 * header ends the walk as PARSE_FRAGMENT; a chain longer than IPV6_EXT_MAX is
 * PARSE_MALFORMED (we cannot tell what it carries).
 * Return: as parse_iphdr.
 */
static __always_inline int parse_ip6hdr(struct xdp_md *ctx, struct hdr_cursor *nh,
					void *data, void *data_end, __u8 saddr[16],
					__u8 daddr[16], __u32 *l3_end)
{
	struct ipv6hdr *ip6 = nh->pos;
	__u32 start, payload_len;
	__u8 nexthdr;

	if ((void *)(ip6 + 1) > data_end)
		return PARSE_MALFORMED;
	if (ip6->version != 6)
		return PARSE_MALFORMED;
	start = nh->pos - data;
	payload_len = bpf_ntohs(ip6->payload_len);
	if (payload_len == 0 ||
	    !pkt_has(ctx, (__u32)(data_end - data),
		     start + sizeof(*ip6) + payload_len))
		return PARSE_MALFORMED;

	__builtin_memcpy(saddr, &ip6->saddr, 16);
	__builtin_memcpy(daddr, &ip6->daddr, 16);
	*l3_end = start + sizeof(*ip6) + payload_len;
	nexthdr = ip6->nexthdr;
	nh->pos = ip6 + 1;

#pragma unroll
	for (int i = 0; i < IPV6_EXT_MAX; i++) {
		struct ipv6_opt_hdr *opt = nh->pos;
		__u32 len;

		if (!ipv6_is_ext(nexthdr))
			break;
		if (nexthdr == IPPROTO_FRAGMENT)
			return PARSE_FRAGMENT;
		if ((void *)(opt + 1) > data_end)
			return PARSE_MALFORMED;
		if (nexthdr == IPPROTO_AH)
			len = (opt->hdrlen + 2) * 4;
		else
			len = (opt->hdrlen + 1) * 8;
		nexthdr = opt->nexthdr;
		nh->pos += len;
	}
	if (nexthdr == IPPROTO_UDP)
		return PARSE_UDP;
	if (ipv6_is_ext(nexthdr))
		return PARSE_MALFORMED;
	return PARSE_OTHER;
}

/*
 * parse_udphdr - UDP header.
 *
 * Checks: the 8 header bytes are in the packet; the UDP length is at least 8
 * and ends no later than the IP datagram (@l3_end, from the IP parser),
 * which itself ends inside the packet. The checksum is not verified: a
 * corrupt line is at worst a wrong line, and userspace sees it whole.
 * @payload_off and @payload_len get the payload's offset from @data and its
 * length in bytes, both from the UDP length, never from data_end (frames may
 * carry Ethernet padding).
 * Return: PARSE_UDP or PARSE_MALFORMED.
 */
static __always_inline int parse_udphdr(struct hdr_cursor *nh, void *data,
					void *data_end, __u32 l3_end,
					__u32 *payload_off, __u32 *payload_len)
{
	struct udphdr *udp = nh->pos;
	__u32 start, udp_len;

	if ((void *)(udp + 1) > data_end)
		return PARSE_MALFORMED;
	start = nh->pos - data;
	udp_len = bpf_ntohs(udp->len);
	if (udp_len < sizeof(*udp) || start + udp_len > l3_end)
		return PARSE_MALFORMED;
	*payload_off = start + sizeof(*udp);
	*payload_len = udp_len - sizeof(*udp);
	return PARSE_UDP;
}

#endif /* LASTGASP_PARSING_H */
