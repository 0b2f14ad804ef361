/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Sockets as the syscall programs see them: an fd resolved to its struct
 * socket, and the local end read from its struct sock. Shared by connect,
 * payload and connection-state programs.
 */
#ifndef AGENTWATCH_SOCKET_H
#define AGENTWATCH_SOCKET_H

#define AW_AF_INET 2
#define AW_AF_INET6 10
#define AW_SOCK_STREAM 1
#define AW_SOCK_DGRAM 2
#define AW_IPPROTO_TCP 6
#define AW_IPPROTO_UDP 17
#define AW_EINPROGRESS 115

/* uapi layouts (ABI-stable): struct sockaddr_in / sockaddr_in6. */
struct aw_sockaddr_in {
	u16 family;
	u16 port;         /* network order */
	u8 addr[4];
};
struct aw_sockaddr_in6 {
	u16 family;
	u16 port;
	u32 flowinfo;
	u8 addr[16];
};

/* A destination as a syscall named it: host-order port, IPv4 in the first 4 bytes. */
struct aw_dest {
	u16 family;
	u16 dport;
	u8 daddr[16];
};

/* An inet destination from a user sockaddr; 0 when it is not AF_INET/AF_INET6 or unreadable. */
static __always_inline int aw_read_dest(const void *uaddr, struct aw_dest *d)
{
	if (!uaddr)
		return 0;
	__builtin_memset(d, 0, sizeof(*d));
	/*
	 * One read of the larger layout: each user read costs about 100 ns, and
	 * connect() comes in storms. It fails only when a sockaddr_in ends just
	 * before an unmapped page; then the sockaddr_in alone, which is all an
	 * AF_INET destination needs.
	 */
	struct aw_sockaddr_in6 any = {};
	int whole = !aw_read_user(&any, sizeof(any), uaddr);
	if (!whole && aw_read_user(&any, sizeof(struct aw_sockaddr_in), uaddr))
		return 0;
	d->family = any.family;
	d->dport = __builtin_bswap16(any.port);
	if (any.family == AW_AF_INET) {
		__builtin_memcpy(d->daddr, &any.flowinfo, 4); /* sin_addr sits where sin6_flowinfo does */
		return 1;
	}
	if (any.family == AW_AF_INET6 && whole) {
		__builtin_memcpy(d->daddr, any.addr, 16);
		return 1;
	}
	return 0;
}

/*
 * fd -> struct socket, through the fd's file (aw_file_of_fd) and
 * file.private_data, each at its BTF offset; *sk gets the socket's struct
 * sock. The socket's back pointer to its file proves the file is a socket.
 */
static __always_inline void *aw_socket_of_fd_sk(u32 fd, void **sk)
{
	*sk = NULL;
	void *file = aw_file_of_fd(fd);
	if (!file)
		return NULL;
	void *sock = aw_read_ptr(file, OFF_FILE_PRIVATE_DATA);
	if (!sock)
		return NULL;
#if OFF_SOCKET_SK == OFF_SOCKET_FILE + 8
	/* One read for both where they sit side by side (every kernel so far). */
	void *pair[2] = {};
	bpf_probe_read_kernel(pair, sizeof(pair), (char *)sock + OFF_SOCKET_FILE);
	if (pair[0] != file)
		return NULL;
	*sk = pair[1];
#else
	if (aw_read_ptr(sock, OFF_SOCKET_FILE) != file)
		return NULL;
	*sk = aw_read_ptr(sock, OFF_SOCKET_SK);
#endif
	return sock;
}

static __always_inline void *aw_socket_of_fd(u32 fd)
{
	void *sk;
	return aw_socket_of_fd_sk(fd, &sk);
}

/* What a record says of its socket: type, protocol and the local end. */
struct aw_sock_info {
	u16 sock_type;
	u16 protocol;
	u16 sport;        /* host order, 0 until bound */
	u8 saddr[16];
};

/* *info for a socket whose struct sock is known (sk, not NULL). */
static __always_inline void aw_sock_info_of(void *sock, void *sk, u16 family, struct aw_sock_info *info)
{
	__builtin_memset(info, 0, sizeof(*info));
	bpf_probe_read_kernel(&info->sock_type, sizeof(info->sock_type), (char *)sock + OFF_SOCKET_TYPE);
	char *common = (char *)sk + OFF_SOCK___SK_COMMON;
	bpf_probe_read_kernel(&info->protocol, sizeof(info->protocol), (char *)sk + OFF_SOCK_SK_PROTOCOL);
	if (family == AW_AF_INET) {
#if OFF_SOCK_COMMON_SKC_NUM == OFF_SOCK_COMMON_SKC_RCV_SADDR + 10
		/* skc_rcv_saddr, skc_dport, skc_num as sock_common lays them out: one read. */
		struct {
			u8 saddr[4];
			u16 _skip[3];
			u16 num;
		} local = {};
		bpf_probe_read_kernel(&local, sizeof(local), common + OFF_SOCK_COMMON_SKC_RCV_SADDR);
		__builtin_memcpy(info->saddr, local.saddr, 4);
		info->sport = local.num;
		return;
#else
		bpf_probe_read_kernel(info->saddr, 4, common + OFF_SOCK_COMMON_SKC_RCV_SADDR);
#endif
	} else {
		bpf_probe_read_kernel(info->saddr, 16, common + OFF_SOCK_COMMON_SKC_V6_RCV_SADDR);
	}
	bpf_probe_read_kernel(&info->sport, sizeof(info->sport), common + OFF_SOCK_COMMON_SKC_NUM);
}

/* The socket's struct sock (its cookie in records), with *info filled; NULL without one. */
static __always_inline void *aw_sock_local(void *sock, u16 family, struct aw_sock_info *info)
{
	void *sk = aw_read_ptr(sock, OFF_SOCKET_SK);
	if (!sk) {
		__builtin_memset(info, 0, sizeof(*info));
		bpf_probe_read_kernel(&info->sock_type, sizeof(info->sock_type), (char *)sock + OFF_SOCKET_TYPE);
		return NULL;
	}
	aw_sock_info_of(sock, sk, family, info);
	return sk;
}

#endif /* AGENTWATCH_SOCKET_H */
