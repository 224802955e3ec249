"""The plain-data protocol between a native sample's tests and its solution, as source text.

Both sides of a C/C++ sample compile `WIRE_H` + `WIRE_C` (and C++ `WIRE_HPP`); both sides of a Rust
sample compile `WIRE_RS`. A frame is a little-endian u32 length and that many bytes; a request is
the entry point's u32 id and its arguments, a reply a status byte (0 returned, 1 raised: C++
exception / Rust panic) and the value, then the in-out arguments. Values: integers as i64/u64
(Rust: i128/u128), floats as f64 bits, bool as one byte 0/1, strings and containers as a u32
count and their items, an optional as a flag byte and its value. Every decoder checks what it
reads against what the frame holds, so a reply can neither make the tests allocate more than it
carries nor decode into a value its type cannot hold: a malformed reply is a failed call.
"""

WIRE_H = r"""/* halo wire: plain data between the tests' process and the solution's (C and C++). */
#ifndef HALO_WIRE_H
#define HALO_WIRE_H
#ifdef __cplusplus
extern "C" {
#endif
typedef struct halo_out { unsigned char *p; unsigned long n, cap; int oom; } halo_out;
typedef struct halo_in { unsigned char *p; unsigned long n, at; int bad; } halo_in;
void *halo_alloc(unsigned long n);
void halo_out_init(halo_out *o);
void halo_put_raw(halo_out *o, const void *data, unsigned long n);
void halo_put_u8(halo_out *o, unsigned v);
void halo_put_u32(halo_out *o, unsigned long v);
void halo_put_i64(halo_out *o, long long v);
void halo_put_u64(halo_out *o, unsigned long long v);
void halo_put_f64(halo_out *o, double v);
void halo_put_str(halo_out *o, const char *s);
void halo_put_bytes(halo_out *o, const char *s, unsigned long n);
int halo_get_u8(halo_in *in, unsigned *v);
int halo_get_u32(halo_in *in, unsigned long *v);
int halo_get_i64(halo_in *in, long long *v, long long lo, long long hi);
int halo_get_u64(halo_in *in, unsigned long long *v, unsigned long long hi);
int halo_get_f64(halo_in *in, double *v);
int halo_get_bool(halo_in *in, int *v);
char *halo_get_str(halo_in *in, int *is_null);
char *halo_get_bytes(halo_in *in, unsigned long *n);
int halo_get_count(halo_in *in, unsigned long *n, unsigned long item_bytes);
int halo_send(int fd, halo_out *o);
int halo_recv(int fd, halo_in *in);
int halo_done(halo_in *in);
void halo_in_free(halo_in *in);
/* the tests' side (WIRE_CALL_C) */
extern int halo_fault, halo_dead, halo_req_fd, halo_rep_fd;
int halo_call_begin(halo_out *q, unsigned long id);
int halo_call_end(halo_out *q, halo_in *r, int *status);
int halo_finish(halo_in *r);
void halo_fail(void);
unsigned long halo_len(long long n);
#ifdef __cplusplus
}
#endif
#endif
"""

WIRE_C = r"""/* halo wire: the implementation (compiled on its own, never with the solution's text). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "halo_wire.h"
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#define HALO_MAX_FRAME (64ul << 20)

void *halo_alloc(unsigned long n) { return malloc(n ? n : 1); }

static void halo_grow(halo_out *o, unsigned long more) {
    unsigned long cap;
    unsigned char *p;
    if (o->oom || o->n + more <= o->cap) return;
    cap = o->cap ? o->cap : 64;
    while (cap < o->n + more) cap *= 2;
    p = (unsigned char *)realloc(o->p, cap);
    if (!p || cap > HALO_MAX_FRAME + 8) { o->oom = 1; return; }
    o->p = p;
    o->cap = cap;
}

void halo_out_init(halo_out *o) {
    o->p = 0;
    o->n = o->cap = 0;
    o->oom = 0;
    halo_put_u32(o, 0); /* the frame's length, filled in by halo_send */
}

void halo_put_raw(halo_out *o, const void *data, unsigned long n) {
    halo_grow(o, n);
    if (!o->oom && n) { memcpy(o->p + o->n, data, n); o->n += n; }
}

void halo_put_u8(halo_out *o, unsigned v) { unsigned char b = (unsigned char)v; halo_put_raw(o, &b, 1); }

void halo_put_u32(halo_out *o, unsigned long v) {
    unsigned char b[4];
    int i;
    for (i = 0; i < 4; i++) b[i] = (unsigned char)(v >> (8 * i));
    halo_put_raw(o, b, 4);
}

void halo_put_u64(halo_out *o, unsigned long long v) {
    unsigned char b[8];
    int i;
    for (i = 0; i < 8; i++) b[i] = (unsigned char)(v >> (8 * i));
    halo_put_raw(o, b, 8);
}

void halo_put_i64(halo_out *o, long long v) { halo_put_u64(o, (unsigned long long)v); }

void halo_put_f64(halo_out *o, double v) { unsigned long long u; memcpy(&u, &v, 8); halo_put_u64(o, u); }

void halo_put_bytes(halo_out *o, const char *s, unsigned long n) { halo_put_u32(o, n); halo_put_raw(o, s, n); }

void halo_put_str(halo_out *o, const char *s) {
    if (!s) halo_put_u32(o, 0xFFFFFFFFul);
    else halo_put_bytes(o, s, (unsigned long)strlen(s));
}

static int halo_take(halo_in *in, void *dst, unsigned long n) {
    if (in->bad || n > in->n - in->at) { in->bad = 1; return 0; }
    memcpy(dst, in->p + in->at, n);
    in->at += n;
    return 1;
}

int halo_get_u8(halo_in *in, unsigned *v) { unsigned char b = 0; int ok = halo_take(in, &b, 1); *v = b; return ok; }

int halo_get_u32(halo_in *in, unsigned long *v) {
    unsigned char b[4] = {0};
    int ok = halo_take(in, b, 4);
    *v = (unsigned long)b[0] | (unsigned long)b[1] << 8 | (unsigned long)b[2] << 16 | (unsigned long)b[3] << 24;
    return ok;
}

static int halo_get_raw64(halo_in *in, unsigned long long *v) {
    unsigned char b[8] = {0};
    int i, ok = halo_take(in, b, 8);
    *v = 0;
    for (i = 7; i >= 0; i--) *v = *v << 8 | b[i];
    return ok;
}

int halo_get_i64(halo_in *in, long long *v, long long lo, long long hi) {
    unsigned long long u = 0;
    *v = 0;
    if (!halo_get_raw64(in, &u)) return 0;
    *v = (long long)u;
    if (*v < lo || *v > hi) { in->bad = 1; *v = 0; return 0; }
    return 1;
}

int halo_get_u64(halo_in *in, unsigned long long *v, unsigned long long hi) {
    *v = 0;
    if (!halo_get_raw64(in, v)) return 0;
    if (*v > hi) { in->bad = 1; *v = 0; return 0; }
    return 1;
}

int halo_get_f64(halo_in *in, double *v) {
    unsigned long long u = 0;
    int ok = halo_get_raw64(in, &u);
    memcpy(v, &u, 8);
    return ok;
}

int halo_get_bool(halo_in *in, int *v) {
    unsigned b = 0;
    *v = 0;
    if (!halo_get_u8(in, &b)) return 0;
    if (b > 1) { in->bad = 1; return 0; }
    *v = (int)b;
    return 1;
}

char *halo_get_bytes(halo_in *in, unsigned long *n) {
    char *s;
    *n = 0;
    if (!halo_get_u32(in, n)) return 0;
    if (*n > in->n - in->at) { in->bad = 1; *n = 0; return 0; }
    s = (char *)malloc(*n + 1);
    if (!s) { in->bad = 1; *n = 0; return 0; }
    memcpy(s, in->p + in->at, *n);
    s[*n] = 0;
    in->at += *n;
    return s;
}

char *halo_get_str(halo_in *in, int *is_null) {
    unsigned long n = 0;
    unsigned long at = in->at;
    *is_null = 0;
    if (!halo_get_u32(in, &n)) return 0;
    if (n == 0xFFFFFFFFul) { *is_null = 1; return 0; }
    in->at = at;
    return halo_get_bytes(in, &n);
}

/* 1: a count (each item at least item_bytes long, all within the frame); 2: the NULL marker; 0: bad */
int halo_get_count(halo_in *in, unsigned long *n, unsigned long item_bytes) {
    *n = 0;
    if (!halo_get_u32(in, n)) return 0;
    if (*n == 0xFFFFFFFFul) { *n = 0; return 2; }
    if (item_bytes && *n > (in->n - in->at) / item_bytes) { in->bad = 1; *n = 0; return 0; }
    return 1;
}

static int halo_write_all(int fd, const unsigned char *p, unsigned long n) {
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return 0;
        p += w;
        n -= (unsigned long)w;
    }
    return 1;
}

static int halo_read_all(int fd, unsigned char *p, unsigned long n) {
    while (n) {
        ssize_t r = read(fd, p, n);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return 0;
        p += r;
        n -= (unsigned long)r;
    }
    return 1;
}

int halo_send(int fd, halo_out *o) {
    int ok = !o->oom && o->n >= 4 && o->n - 4 <= HALO_MAX_FRAME;
    if (ok) {
        unsigned long n = o->n - 4;
        int i;
        for (i = 0; i < 4; i++) o->p[i] = (unsigned char)(n >> (8 * i));
        ok = halo_write_all(fd, o->p, o->n);
    }
    free(o->p);
    o->p = 0;
    return ok;
}

int halo_recv(int fd, halo_in *in) {
    unsigned char b[4];
    unsigned long n;
    in->p = 0;
    in->n = in->at = 0;
    in->bad = 1;
    if (!halo_read_all(fd, b, 4)) return 0;
    n = (unsigned long)b[0] | (unsigned long)b[1] << 8 | (unsigned long)b[2] << 16 | (unsigned long)b[3] << 24;
    if (n > HALO_MAX_FRAME) return 0;
    in->p = (unsigned char *)malloc(n ? n : 1);
    if (!in->p || !halo_read_all(fd, in->p, n)) { free(in->p); in->p = 0; return 0; }
    in->n = n;
    in->bad = 0;
    return 1;
}

void halo_in_free(halo_in *in) { free(in->p); in->p = 0; }

int halo_done(halo_in *in) {
    int ok = !in->bad && in->at == in->n;
    halo_in_free(in);
    return ok;
}

#ifdef __cplusplus
#include <new>
#include <stdexcept>
namespace halo_wire {
int code_of(const std::exception &e) {
    if (dynamic_cast<const std::invalid_argument *>(&e)) return 1;
    if (dynamic_cast<const std::domain_error *>(&e)) return 2;
    if (dynamic_cast<const std::length_error *>(&e)) return 3;
    if (dynamic_cast<const std::out_of_range *>(&e)) return 4;
    if (dynamic_cast<const std::logic_error *>(&e)) return 5;
    if (dynamic_cast<const std::range_error *>(&e)) return 6;
    if (dynamic_cast<const std::overflow_error *>(&e)) return 7;
    if (dynamic_cast<const std::underflow_error *>(&e)) return 8;
    if (dynamic_cast<const std::runtime_error *>(&e)) return 9;
    if (dynamic_cast<const std::bad_alloc *>(&e)) return 10;
    return 11;
}
}  // namespace halo_wire
#endif

"""

WIRE_CALL_C = r"""/* halo wire, the tests' side only: calling the solution. */
int halo_fault, halo_dead, halo_req_fd = -1, halo_rep_fd = -1;

/* The tests' side. A failed call (the solution gone, a malformed reply) fails the check it is in,
   and every later call fails at once: the solution is never asked again. */
void halo_fail(void) { halo_fault = 1; halo_dead = 1; }

int halo_call_begin(halo_out *q, unsigned long id) {
    if (halo_dead) { halo_fault = 1; return 0; }
    halo_out_init(q);
    halo_put_u32(q, id);
    return 1;
}

int halo_call_end(halo_out *q, halo_in *r, int *status) {
    unsigned s = 0;
    r->p = 0;
    if (!halo_send(halo_req_fd, q) || !halo_recv(halo_rep_fd, r)) { halo_fail(); return 0; }
    if (!halo_get_u8(r, &s) || s > 1) { halo_in_free(r); halo_fail(); return 0; }
    *status = (int)s;
    return 1;
}

int halo_finish(halo_in *r) {
    if (!halo_done(r)) { halo_fail(); return 0; }
    return 1;
}

unsigned long halo_len(long long n) { return n < 0 ? 0ul : n > 0x7FFFFFFFll ? 0x7FFFFFFFul : (unsigned long)n; }
"""

WIRE_HPP = r"""/* halo wire for C++: the std types, by template (header-only).
   The solution's unit includes it before the solution's text with only the headers its entry points'
   types need (HALO_NEED_<name>); the tests' side defines them all and HALO_TESTS_SIDE. */
#ifndef HALO_WIRE_HPP
#define HALO_WIRE_HPP
#include "halo_wire.h"
#include <cstddef>
#include <cstdlib>
#include <exception>
#include <limits>
#include <type_traits>
#if defined(HALO_NEED_string)
#include <string>
#endif
#if defined(HALO_NEED_string_view)
#include <string_view>
#endif
#if defined(HALO_NEED_pair) || defined(HALO_NEED_map) || defined(HALO_NEED_unordered_map) || defined(HALO_NEED_tuple)
#include <utility>
#endif
#if defined(HALO_NEED_vector)
#include <vector>
#endif
#if defined(HALO_NEED_deque)
#include <deque>
#endif
#if defined(HALO_NEED_list)
#include <list>
#endif
#if defined(HALO_NEED_set) || defined(HALO_NEED_multiset)
#include <set>
#endif
#if defined(HALO_NEED_unordered_set)
#include <unordered_set>
#endif
#if defined(HALO_NEED_map)
#include <map>
#endif
#if defined(HALO_NEED_unordered_map)
#include <unordered_map>
#endif
#if defined(HALO_NEED_tuple)
#include <tuple>
#endif
#if defined(HALO_NEED_array)
#include <array>
#endif
#if defined(HALO_NEED_optional)
#include <optional>
#endif

namespace halo_wire {
struct fault {};    /* the solution is gone or broke the protocol: not a std::exception */
struct foreign {};  /* the solution threw something that is not a std::exception */

template <class T, class = void> struct W;

template <> struct W<bool> {
    static void put(halo_out *o, bool v) { halo_put_u8(o, v ? 1u : 0u); }
    static bool get(halo_in *i, bool &v) { int b = 0; bool ok = halo_get_bool(i, &b) != 0; v = b != 0; return ok; }
};

template <class T> struct W<T, typename std::enable_if<std::is_integral<T>::value && !std::is_same<T, bool>::value>::type> {
    static void put(halo_out *o, T v) {
        if (std::is_signed<T>::value) halo_put_i64(o, (long long)v);
        else halo_put_u64(o, (unsigned long long)v);
    }
    static bool get(halo_in *i, T &v) {
        if (std::is_signed<T>::value) {
            long long x = 0;
            bool ok = halo_get_i64(i, &x, (long long)std::numeric_limits<T>::min(), (long long)std::numeric_limits<T>::max()) != 0;
            v = (T)x;
            return ok;
        }
        unsigned long long x = 0;
        bool ok = halo_get_u64(i, &x, (unsigned long long)std::numeric_limits<T>::max()) != 0;
        v = (T)x;
        return ok;
    }
};

template <class T> struct W<T, typename std::enable_if<std::is_floating_point<T>::value>::type> {
    static void put(halo_out *o, T v) { halo_put_f64(o, (double)v); }
    static bool get(halo_in *i, T &v) { double x = 0; bool ok = halo_get_f64(i, &x) != 0; v = (T)x; return ok; }
};

#if defined(HALO_NEED_string)
template <> struct W<std::string> {
    static void put(halo_out *o, const std::string &s) { halo_put_bytes(o, s.data(), (unsigned long)s.size()); }
    static bool get(halo_in *i, std::string &s) {
        unsigned long n = 0;
        char *p = halo_get_bytes(i, &n);
        if (!p) return false;
        s.assign(p, n);
        std::free(p);
        return true;
    }
};
#endif

#if defined(HALO_NEED_string_view)
template <> struct W<std::string_view> {
    static void put(halo_out *o, std::string_view s) { halo_put_bytes(o, s.data(), (unsigned long)s.size()); }
};
#endif

template <class C> struct Seq {  /* sequences and sets: a count, then the items */
    static void put(halo_out *o, const C &c) {
        halo_put_u32(o, (unsigned long)c.size());
        for (const auto &x : c) W<typename C::value_type>::put(o, x);
    }
    template <class Add> static bool get(halo_in *i, C &c, Add add) {
        unsigned long n = 0;
        if (halo_get_count(i, &n, 1) != 1) { i->bad = 1; return false; }
        c.clear();
        for (unsigned long k = 0; k < n; k++) {
            typename C::value_type x{};
            if (!W<typename C::value_type>::get(i, x)) return false;
            add(c, static_cast<typename C::value_type &&>(x));
        }
        return true;
    }
};

#if defined(HALO_NEED_vector)
template <class T, class A> struct W<std::vector<T, A>> {
    static void put(halo_out *o, const std::vector<T, A> &v) {
        halo_put_u32(o, (unsigned long)v.size());
        for (std::size_t k = 0; k < v.size(); k++) W<T>::put(o, v[k]);
    }
    static bool get(halo_in *i, std::vector<T, A> &v) {
        return Seq<std::vector<T, A>>::get(i, v, [](std::vector<T, A> &c, T &&x) { c.push_back(static_cast<T &&>(x)); });
    }
};
#endif
#if defined(HALO_NEED_deque)
template <class T, class A> struct W<std::deque<T, A>> {
    static void put(halo_out *o, const std::deque<T, A> &v) { Seq<std::deque<T, A>>::put(o, v); }
    static bool get(halo_in *i, std::deque<T, A> &v) { return Seq<std::deque<T, A>>::get(i, v, [](std::deque<T, A> &c, T &&x) { c.push_back(static_cast<T &&>(x)); }); }
};
#endif
#if defined(HALO_NEED_list)
template <class T, class A> struct W<std::list<T, A>> {
    static void put(halo_out *o, const std::list<T, A> &v) { Seq<std::list<T, A>>::put(o, v); }
    static bool get(halo_in *i, std::list<T, A> &v) { return Seq<std::list<T, A>>::get(i, v, [](std::list<T, A> &c, T &&x) { c.push_back(static_cast<T &&>(x)); }); }
};
#endif
#if defined(HALO_NEED_set) || defined(HALO_NEED_multiset)
template <class T, class L, class A> struct W<std::set<T, L, A>> {
    static void put(halo_out *o, const std::set<T, L, A> &v) { Seq<std::set<T, L, A>>::put(o, v); }
    static bool get(halo_in *i, std::set<T, L, A> &v) { return Seq<std::set<T, L, A>>::get(i, v, [](std::set<T, L, A> &c, T &&x) { c.insert(static_cast<T &&>(x)); }); }
};
template <class T, class L, class A> struct W<std::multiset<T, L, A>> {
    static void put(halo_out *o, const std::multiset<T, L, A> &v) { Seq<std::multiset<T, L, A>>::put(o, v); }
    static bool get(halo_in *i, std::multiset<T, L, A> &v) { return Seq<std::multiset<T, L, A>>::get(i, v, [](std::multiset<T, L, A> &c, T &&x) { c.insert(static_cast<T &&>(x)); }); }
};
#endif
#if defined(HALO_NEED_unordered_set)
template <class T, class H, class E, class A> struct W<std::unordered_set<T, H, E, A>> {
    typedef std::unordered_set<T, H, E, A> C;
    static void put(halo_out *o, const C &v) { Seq<C>::put(o, v); }
    static bool get(halo_in *i, C &v) { return Seq<C>::get(i, v, [](C &c, T &&x) { c.insert(static_cast<T &&>(x)); }); }
};
#endif

#if defined(HALO_NEED_pair) || defined(HALO_NEED_map) || defined(HALO_NEED_unordered_map)
template <class A, class B> struct W<std::pair<A, B>> {
    static void put(halo_out *o, const std::pair<A, B> &p) { W<A>::put(o, p.first); W<B>::put(o, p.second); }
    static bool get(halo_in *i, std::pair<A, B> &p) { return W<A>::get(i, p.first) && W<B>::get(i, p.second); }
};
#endif

template <class M> struct Map {
    static void put(halo_out *o, const M &m) {
        halo_put_u32(o, (unsigned long)m.size());
        for (const auto &kv : m) { W<typename M::key_type>::put(o, kv.first); W<typename M::mapped_type>::put(o, kv.second); }
    }
    static bool get(halo_in *i, M &m) {
        unsigned long n = 0;
        if (halo_get_count(i, &n, 2) != 1) { i->bad = 1; return false; }
        m.clear();
        for (unsigned long k = 0; k < n; k++) {
            typename M::key_type key{};
            typename M::mapped_type value{};
            if (!W<typename M::key_type>::get(i, key) || !W<typename M::mapped_type>::get(i, value)) return false;
            m[static_cast<typename M::key_type &&>(key)] = static_cast<typename M::mapped_type &&>(value);
        }
        return true;
    }
};
#if defined(HALO_NEED_map)
template <class K, class V, class L, class A> struct W<std::map<K, V, L, A>> : Map<std::map<K, V, L, A>> {};
#endif
#if defined(HALO_NEED_unordered_map)
template <class K, class V, class H, class E, class A> struct W<std::unordered_map<K, V, H, E, A>> : Map<std::unordered_map<K, V, H, E, A>> {};
#endif

#if defined(HALO_NEED_tuple)
template <class... T> struct W<std::tuple<T...>> {
    template <std::size_t... I> static void put_all(halo_out *o, const std::tuple<T...> &t, std::index_sequence<I...>) {
        int unused[] = {0, (W<T>::put(o, std::get<I>(t)), 0)...};
        (void)unused;
    }
    template <std::size_t... I> static bool get_all(halo_in *i, std::tuple<T...> &t, std::index_sequence<I...>) {
        bool ok = true;
        int unused[] = {0, (ok = ok && W<T>::get(i, std::get<I>(t)), 0)...};
        (void)unused;
        return ok;
    }
    static void put(halo_out *o, const std::tuple<T...> &t) { put_all(o, t, std::index_sequence_for<T...>()); }
    static bool get(halo_in *i, std::tuple<T...> &t) { return get_all(i, t, std::index_sequence_for<T...>()); }
};
#endif
#if defined(HALO_NEED_array)
template <class T, std::size_t N> struct W<std::array<T, N>> {
    static void put(halo_out *o, const std::array<T, N> &a) { halo_put_u32(o, (unsigned long)N); for (const auto &x : a) W<T>::put(o, x); }
    static bool get(halo_in *i, std::array<T, N> &a) {
        unsigned long n = 0;
        if (halo_get_count(i, &n, 1) != 1 || n != N) { i->bad = 1; return false; }
        for (auto &x : a) if (!W<T>::get(i, x)) return false;
        return true;
    }
};
#endif
#if defined(HALO_NEED_optional)
template <class T> struct W<std::optional<T>> {
    static void put(halo_out *o, const std::optional<T> &v) { halo_put_u8(o, v ? 1u : 0u); if (v) W<T>::put(o, *v); }
    static bool get(halo_in *i, std::optional<T> &v) {
        int has = 0;
        if (!halo_get_bool(i, &has)) return false;
        if (!has) { v.reset(); return true; }
        T x{};
        if (!W<T>::get(i, x)) return false;
        v = static_cast<T &&>(x);
        return true;
    }
};
#endif

template <class T> void put(halo_out *o, const T &v) { W<typename std::decay<T>::type>::put(o, v); }
template <class T> void take(halo_in *i, T &v) { if (!i->bad && !W<T>::get(i, v)) i->bad = 1; }

int code_of(const std::exception &e);  /* in the wire's object: which std exception it is */

inline void raise_reply(halo_out *o, int code, const char *what) {
    std::free(o->p);
    halo_out_init(o);
    halo_put_u8(o, 1);
    halo_put_u8(o, (unsigned)code);
    halo_put_str(o, what ? what : "");
}
}  // namespace halo_wire

#if defined(HALO_TESTS_SIDE)
#include <new>
#include <stdexcept>
#include <string>
namespace halo_wire {
/* the solution's std exceptions reach the tests as themselves */
inline void rethrow(halo_in *r) {
    unsigned code = 0;
    std::string what;
    halo_get_u8(r, &code);
    take(r, what);
    if (!halo_finish(r)) throw fault();
    switch (code) {
    case 1: throw std::invalid_argument(what);
    case 2: throw std::domain_error(what);
    case 3: throw std::length_error(what);
    case 4: throw std::out_of_range(what);
    case 5: throw std::logic_error(what);
    case 6: throw std::range_error(what);
    case 7: throw std::overflow_error(what);
    case 8: throw std::underflow_error(what);
    case 9: throw std::runtime_error(what);
    case 10: throw std::bad_alloc();
    case 11: throw std::runtime_error(what);
    default: throw foreign();
    }
}
}  // namespace halo_wire
#endif
#endif
"""

WIRE_RS_CRATE = r"""//! Plain data between the tests' process and the solution's: the crate `halo_wire`.
#![allow(dead_code, unused_imports)]
use ::std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use ::std::hash::Hash;
use ::std::io::{Read, Write};

pub const MAX_FRAME: usize = 64 << 20;

pub struct In<'a> {
    pub b: &'a [u8],
    pub at: usize,
    pub bad: bool,
}

impl<'a> In<'a> {
    pub fn new(b: &'a [u8]) -> Self {
        In { b, at: 0, bad: false }
    }
    pub fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.bad || n > self.b.len() - self.at {
            self.bad = true;
            return None;
        }
        let s = &self.b[self.at..self.at + n];
        self.at += n;
        Some(s)
    }
    pub fn u8(&mut self) -> Option<u8> {
        self.bytes(1).map(|s| s[0])
    }
    pub fn u32(&mut self) -> Option<u32> {
        self.bytes(4).map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
    pub fn count(&mut self, item: usize) -> Option<usize> {
        let n = self.u32()? as usize;
        if n > (self.b.len() - self.at) / item.max(1) {
            self.bad = true;
            return None;
        }
        Some(n)
    }
    pub fn get<T: Wire>(&mut self) -> Option<T> {
        let v = T::get(self);
        if v.is_none() {
            self.bad = true;
        }
        v
    }
    pub fn done(&self) -> bool {
        !self.bad && self.at == self.b.len()
    }
}

pub trait Wire: Sized {
    fn put(&self, o: &mut Vec<u8>);
    fn get(r: &mut In) -> Option<Self>;
}

pub fn put_u32(o: &mut Vec<u8>, n: usize) {
    o.extend_from_slice(&(n as u32).to_le_bytes());
}

pub fn put_str(o: &mut Vec<u8>, s: &str) {
    put_u32(o, s.len());
    o.extend_from_slice(s.as_bytes());
}

pub fn put_slice<T: Wire>(o: &mut Vec<u8>, s: &[T]) {
    put_u32(o, s.len());
    for x in s {
        x.put(o);
    }
}

macro_rules! wire_int {
    ($($t:ty),*) => {$(
        impl Wire for $t {
            fn put(&self, o: &mut Vec<u8>) {
                o.extend_from_slice(&(*self as i128).to_le_bytes());
            }
            fn get(r: &mut In) -> Option<Self> {
                let s = r.bytes(16)?;
                let mut b = [0u8; 16];
                b.copy_from_slice(s);
                <$t>::try_from(i128::from_le_bytes(b)).ok()
            }
        }
    )*};
}
wire_int!(i8, i16, i32, i64, i128, isize, u8, u16, u32, u64, usize);

impl Wire for u128 {
    fn put(&self, o: &mut Vec<u8>) {
        o.extend_from_slice(&self.to_le_bytes());
    }
    fn get(r: &mut In) -> Option<Self> {
        let s = r.bytes(16)?;
        let mut b = [0u8; 16];
        b.copy_from_slice(s);
        Some(u128::from_le_bytes(b))
    }
}

impl Wire for bool {
    fn put(&self, o: &mut Vec<u8>) {
        o.push(*self as u8);
    }
    fn get(r: &mut In) -> Option<Self> {
        match r.u8()? {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        }
    }
}

impl Wire for char {
    fn put(&self, o: &mut Vec<u8>) {
        o.extend_from_slice(&(*self as u32).to_le_bytes());
    }
    fn get(r: &mut In) -> Option<Self> {
        char::from_u32(r.u32()?)
    }
}

impl Wire for f64 {
    fn put(&self, o: &mut Vec<u8>) {
        o.extend_from_slice(&self.to_bits().to_le_bytes());
    }
    fn get(r: &mut In) -> Option<Self> {
        let s = r.bytes(8)?;
        let mut b = [0u8; 8];
        b.copy_from_slice(s);
        Some(f64::from_bits(u64::from_le_bytes(b)))
    }
}

impl Wire for f32 {
    fn put(&self, o: &mut Vec<u8>) {
        o.extend_from_slice(&self.to_bits().to_le_bytes());
    }
    fn get(r: &mut In) -> Option<Self> {
        Some(f32::from_bits(r.u32()?))
    }
}

impl Wire for String {
    fn put(&self, o: &mut Vec<u8>) {
        put_str(o, self);
    }
    fn get(r: &mut In) -> Option<Self> {
        let n = r.count(1)?;
        String::from_utf8(r.bytes(n)?.to_vec()).ok()
    }
}

impl Wire for () {
    fn put(&self, _o: &mut Vec<u8>) {}
    fn get(_r: &mut In) -> Option<Self> {
        Some(())
    }
}

impl<T: Wire> Wire for Vec<T> {
    fn put(&self, o: &mut Vec<u8>) {
        put_slice(o, self);
    }
    fn get(r: &mut In) -> Option<Self> {
        let n = r.count(1)?;
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(r.get()?);
        }
        Some(v)
    }
}

macro_rules! wire_collection {
    ($c:ident, $add:ident, $($bound:path),*) => {
        impl<T: Wire $(+ $bound)*> Wire for $c<T> {
            fn put(&self, o: &mut Vec<u8>) {
                put_u32(o, self.len());
                for x in self.iter() {
                    x.put(o);
                }
            }
            fn get(r: &mut In) -> Option<Self> {
                let n = r.count(1)?;
                let mut c = $c::new();
                for _ in 0..n {
                    c.$add(r.get()?);
                }
                Some(c)
            }
        }
    };
}
wire_collection!(VecDeque, push_back,);
wire_collection!(HashSet, insert, Eq, Hash);
wire_collection!(BTreeSet, insert, Ord);

macro_rules! wire_map {
    ($c:ident, $($bound:path),*) => {
        impl<K: Wire $(+ $bound)*, V: Wire> Wire for $c<K, V> {
            fn put(&self, o: &mut Vec<u8>) {
                put_u32(o, self.len());
                for (k, v) in self.iter() {
                    k.put(o);
                    v.put(o);
                }
            }
            fn get(r: &mut In) -> Option<Self> {
                let n = r.count(2)?;
                let mut m = $c::new();
                for _ in 0..n {
                    let k = r.get()?;
                    m.insert(k, r.get()?);
                }
                Some(m)
            }
        }
    };
}
wire_map!(HashMap, Eq, Hash);
wire_map!(BTreeMap, Ord);

impl<T: Wire> Wire for Option<T> {
    fn put(&self, o: &mut Vec<u8>) {
        match self {
            None => o.push(0),
            Some(v) => {
                o.push(1);
                v.put(o);
            }
        }
    }
    fn get(r: &mut In) -> Option<Self> {
        match r.u8()? {
            0 => Some(None),
            1 => Some(Some(r.get()?)),
            _ => None,
        }
    }
}

impl<T: Wire, E: Wire> Wire for Result<T, E> {
    fn put(&self, o: &mut Vec<u8>) {
        match self {
            Ok(v) => {
                o.push(0);
                v.put(o);
            }
            Err(e) => {
                o.push(1);
                e.put(o);
            }
        }
    }
    fn get(r: &mut In) -> Option<Self> {
        match r.u8()? {
            0 => Some(Ok(r.get()?)),
            1 => Some(Err(r.get()?)),
            _ => None,
        }
    }
}

impl<T: Wire> Wire for Box<T> {
    fn put(&self, o: &mut Vec<u8>) {
        (**self).put(o);
    }
    fn get(r: &mut In) -> Option<Self> {
        Some(Box::new(r.get()?))
    }
}

impl<T: Wire, const N: usize> Wire for [T; N] {
    fn put(&self, o: &mut Vec<u8>) {
        put_slice(o, self);
    }
    fn get(r: &mut In) -> Option<Self> {
        let v: Vec<T> = Vec::get(r)?;
        v.try_into().ok()
    }
}

macro_rules! wire_tuple {
    ($($t:ident),+) => {
        impl<$($t: Wire),+> Wire for ($($t,)+) {
            #[allow(non_snake_case)]
            fn put(&self, o: &mut Vec<u8>) {
                let ($($t,)+) = self;
                $($t.put(o);)+
            }
            fn get(r: &mut In) -> Option<Self> {
                Some(($(r.get::<$t>()?,)+))
            }
        }
    };
}
wire_tuple!(A);
wire_tuple!(A, B);
wire_tuple!(A, B, C);
wire_tuple!(A, B, C, D);
wire_tuple!(A, B, C, D, E);
wire_tuple!(A, B, C, D, E, F);
wire_tuple!(A, B, C, D, E, F, G);
wire_tuple!(A, B, C, D, E, F, G, H);

pub fn send(w: &mut impl Write, payload: &[u8]) -> bool {
    if payload.len() > MAX_FRAME {
        return false;
    }
    let mut frame = (payload.len() as u32).to_le_bytes().to_vec();
    frame.extend_from_slice(payload);
    w.write_all(&frame).is_ok() && w.flush().is_ok()
}

pub fn recv(r: &mut impl Read) -> Option<Vec<u8>> {
    let mut head = [0u8; 4];
    r.read_exact(&mut head).ok()?;
    let n = u32::from_le_bytes(head) as usize;
    if n > MAX_FRAME {
        return None;
    }
    let mut body = vec![0u8; n];
    r.read_exact(&mut body).ok()?;
    Some(body)
}

pub fn panic_message(e: &(dyn ::std::any::Any + Send)) -> String {
    if let Some(s) = e.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = e.downcast_ref::<String>() {
        s.clone()
    } else {
        String::new()
    }
}
"""
# the same, as a module of the crate that uses it (where no prebuilt crate is at hand)
WIRE_RS = "\n#[allow(dead_code, unused_imports)]\npub mod halo_wire {\n" + WIRE_RS_CRATE.split("\n", 2)[2] + "}\n"
