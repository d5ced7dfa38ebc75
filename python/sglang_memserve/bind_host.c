/* bind_host.so: an LD_PRELOAD shim that turns a wildcard bind into a bind to one host.
 *
 * Mooncake's TransferEngine binds its handshake port to INADDR_ANY and its TCP transport to
 * "::" (every interface, both families) whatever the configured host is (docs/reliability.md).
 * With MEMSERVE_BIND_HOST set to an IP address, a bind() to 0.0.0.0 or :: in this process
 * binds that address instead: an IPv4 host binds IPv6 sockets to its v4-mapped address
 * (::ffff:a.b.c.d), which a dual-stack socket accepts IPv4 connections on. Binds to a named
 * address, to other families and with the variable unset go through unchanged.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

typedef int (*bind_fn)(int, const struct sockaddr *, socklen_t);

static int host_v4(struct in_addr *out) {
    const char *host = getenv("MEMSERVE_BIND_HOST");
    return host && inet_pton(AF_INET, host, out) == 1;
}

static int host_v6(struct in6_addr *out) {
    const char *host = getenv("MEMSERVE_BIND_HOST");
    struct in_addr v4;
    if (!host) return 0;
    if (inet_pton(AF_INET6, host, out) == 1) return 1;
    if (inet_pton(AF_INET, host, &v4) != 1) return 0;
    memset(out, 0, sizeof *out);
    out->s6_addr[10] = 0xff;
    out->s6_addr[11] = 0xff;
    memcpy(&out->s6_addr[12], &v4, sizeof v4);
    return 1;
}

int bind(int fd, const struct sockaddr *addr, socklen_t len) {
    static bind_fn real_bind;
    if (!real_bind) real_bind = (bind_fn)dlsym(RTLD_NEXT, "bind");
    if (addr && addr->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
        struct sockaddr_in in;
        memcpy(&in, addr, sizeof in);
        if (in.sin_addr.s_addr == htonl(INADDR_ANY) && host_v4(&in.sin_addr))
            return real_bind(fd, (const struct sockaddr *)&in, sizeof in);
    } else if (addr && addr->sa_family == AF_INET6 &&
               len >= (socklen_t)sizeof(struct sockaddr_in6)) {
        struct sockaddr_in6 in6;
        memcpy(&in6, addr, sizeof in6);
        if (IN6_IS_ADDR_UNSPECIFIED(&in6.sin6_addr) && host_v6(&in6.sin6_addr))
            return real_bind(fd, (const struct sockaddr *)&in6, sizeof in6);
    }
    return real_bind(fd, addr, len);
}
