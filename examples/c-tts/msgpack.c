/* msgpack.h: a small msgpack writer and reader (https://github.com/msgpack/msgpack/blob/master/spec.md).
 * Multi-byte lengths and numbers are big-endian on the wire. */
#include "msgpack.h"

#include <string.h>

/* --- writer --------------------------------------------------------------------------- */

void mp_init(mp_buf *b, uint8_t *storage, size_t cap) {
    b->data = storage;
    b->len = 0;
    b->cap = cap;
    b->failed = false;
}

static void put(mp_buf *b, const void *p, size_t n) {
    if (b->failed || n > b->cap - b->len) {
        b->failed = true;
        return;
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
}

static void put_u8(mp_buf *b, uint8_t v) { put(b, &v, 1); }

static void put_be(mp_buf *b, uint64_t v, int bytes) {
    uint8_t out[8];
    for (int i = 0; i < bytes; i++)
        out[i] = (uint8_t)(v >> (8 * (bytes - 1 - i)));
    put(b, out, (size_t)bytes);
}

/* One header with a length: the fix form (if any) below fix_max, else 8/16/32-bit forms. */
static void put_len(mp_buf *b, uint64_t n, int fix, uint64_t fix_max, int c8, int c16, int c32) {
    if (fix >= 0 && n <= fix_max) {
        put_u8(b, (uint8_t)(fix | (int)n));
    } else if (c8 >= 0 && n <= 0xff) {
        put_u8(b, (uint8_t)c8);
        put_be(b, n, 1);
    } else if (n <= 0xffff) {
        put_u8(b, (uint8_t)c16);
        put_be(b, n, 2);
    } else if (n <= 0xffffffffu) {
        put_u8(b, (uint8_t)c32);
        put_be(b, n, 4);
    } else {
        b->failed = true;
    }
}

void mp_map(mp_buf *b, uint32_t entries) { put_len(b, entries, 0x80, 15, -1, 0xde, 0xdf); }
void mp_array(mp_buf *b, uint32_t items) { put_len(b, items, 0x90, 15, -1, 0xdc, 0xdd); }

void mp_strn(mp_buf *b, const char *s, size_t n) {
    put_len(b, n, 0xa0, 31, 0xd9, 0xda, 0xdb);
    put(b, s, n);
}

void mp_str(mp_buf *b, const char *s) { mp_strn(b, s, strlen(s)); }

void mp_int(mp_buf *b, int64_t v) {
    if (v >= 0) {
        uint64_t u = (uint64_t)v;
        if (u <= 0x7f) put_u8(b, (uint8_t)u);
        else if (u <= 0xff) { put_u8(b, 0xcc); put_be(b, u, 1); }
        else if (u <= 0xffff) { put_u8(b, 0xcd); put_be(b, u, 2); }
        else if (u <= 0xffffffffu) { put_u8(b, 0xce); put_be(b, u, 4); }
        else { put_u8(b, 0xcf); put_be(b, u, 8); }
    } else if (v >= -32) {
        put_u8(b, (uint8_t)(int8_t)v); /* negative fixint: 111xxxxx */
    } else if (v >= INT8_MIN) {
        put_u8(b, 0xd0); put_be(b, (uint64_t)v, 1);
    } else if (v >= INT16_MIN) {
        put_u8(b, 0xd1); put_be(b, (uint64_t)v, 2);
    } else if (v >= INT32_MIN) {
        put_u8(b, 0xd2); put_be(b, (uint64_t)v, 4);
    } else {
        put_u8(b, 0xd3); put_be(b, (uint64_t)v, 8);
    }
}

void mp_bool(mp_buf *b, bool v) { put_u8(b, v ? 0xc3 : 0xc2); }
void mp_nil(mp_buf *b) { put_u8(b, 0xc0); }

void mp_float(mp_buf *b, double v) {
    uint64_t bits;
    memcpy(&bits, &v, sizeof bits); /* IEEE 754 binary64, sent big-endian */
    put_u8(b, 0xcb);
    put_be(b, bits, 8);
}

void mp_bin(mp_buf *b, const void *p, size_t n) {
    put_len(b, n, -1, 0, 0xc4, 0xc5, 0xc6);
    put(b, p, n);
}

/* --- reader --------------------------------------------------------------------------- */

static int take(mp_reader *r, size_t n, const uint8_t **out) {
    if ((size_t)(r->end - r->p) < n) return -1;
    *out = r->p;
    r->p += n;
    return 0;
}

static int take_be(mp_reader *r, int bytes, uint64_t *v) {
    const uint8_t *p;
    if (take(r, (size_t)bytes, &p) < 0) return -1;
    *v = 0;
    for (int i = 0; i < bytes; i++) *v = (*v << 8) | p[i];
    return 0;
}

mp_type mp_peek(const mp_reader *r) {
    if (r->p >= r->end) return MP_END;
    uint8_t c = *r->p;
    if (c <= 0x7f || c >= 0xe0 || (c >= 0xcc && c <= 0xd3)) return MP_INT;
    if (c <= 0x8f || c == 0xde || c == 0xdf) return MP_MAP;
    if (c <= 0x9f || c == 0xdc || c == 0xdd) return MP_ARRAY;
    if (c <= 0xbf || (c >= 0xd9 && c <= 0xdb)) return MP_STR;
    switch (c) {
    case 0xc0: return MP_NIL;
    case 0xc2: case 0xc3: return MP_BOOL;
    case 0xc4: case 0xc5: case 0xc6: return MP_BIN;
    case 0xca: case 0xcb: return MP_FLOAT;
    default: return MP_OTHER;
    }
}

/* The length in a container, str or bin header: a fix form fix_lo..fix_hi (none when
 * fix_lo > fix_hi) or a code byte followed by an 8, 16 or 32-bit length (-1: no such form). */
static int read_len(mp_reader *r, uint8_t fix_lo, uint8_t fix_hi, int c8, int c16, int c32,
                    uint32_t *n) {
    const uint8_t *p;
    uint64_t v;
    if (take(r, 1, &p) < 0) return -1;
    uint8_t c = *p;
    if (c >= fix_lo && c <= fix_hi) { *n = (uint32_t)(c - fix_lo); return 0; }
    int bytes = c == c8 ? 1 : c == c16 ? 2 : c == c32 ? 4 : 0;
    if (bytes == 0 || take_be(r, bytes, &v) < 0) return -1;
    *n = (uint32_t)v;
    return 0;
}

int mp_read_map(mp_reader *r, uint32_t *entries) {
    if (mp_peek(r) != MP_MAP) return -1;
    return read_len(r, 0x80, 0x8f, -1, 0xde, 0xdf, entries);
}

int mp_read_array(mp_reader *r, uint32_t *items) {
    if (mp_peek(r) != MP_ARRAY) return -1;
    return read_len(r, 0x90, 0x9f, -1, 0xdc, 0xdd, items);
}

int mp_read_str(mp_reader *r, const char **s, uint32_t *len) {
    const uint8_t *p;
    if (mp_peek(r) != MP_STR || read_len(r, 0xa0, 0xbf, 0xd9, 0xda, 0xdb, len) < 0) return -1;
    if (take(r, *len, &p) < 0 || !utf8_valid(p, *len)) return -1;
    *s = (const char *)p;
    return 0;
}

int mp_read_bin(mp_reader *r, const uint8_t **p, uint32_t *len) {
    /* bin has no fix form: fix_lo > fix_hi disables it */
    if (mp_peek(r) != MP_BIN || read_len(r, 1, 0, 0xc4, 0xc5, 0xc6, len) < 0) return -1;
    return take(r, *len, p);
}

int mp_read_int(mp_reader *r, int64_t *v) {
    const uint8_t *p;
    uint64_t u;
    if (mp_peek(r) != MP_INT || take(r, 1, &p) < 0) return -1;
    uint8_t c = *p;
    if (c <= 0x7f) { *v = c; return 0; }
    if (c >= 0xe0) { *v = (int8_t)c; return 0; }
    static const int widths[] = {1, 2, 4, 8, 1, 2, 4, 8}; /* 0xcc..0xd3 */
    int bytes = widths[c - 0xcc];
    if (take_be(r, bytes, &u) < 0) return -1;
    if (c <= 0xcf) { /* unsigned */
        if (u > INT64_MAX) return -1; /* larger than any field we keep */
        *v = (int64_t)u;
    } else { /* signed: sign-extend from its width */
        int shift = 64 - 8 * bytes;
        *v = (int64_t)(u << shift) >> shift;
    }
    return 0;
}

int mp_read_float(mp_reader *r, double *v) {
    if (mp_peek(r) == MP_INT) {
        int64_t i;
        if (mp_read_int(r, &i) < 0) return -1;
        *v = (double)i;
        return 0;
    }
    const uint8_t *p;
    uint64_t bits;
    if (mp_peek(r) != MP_FLOAT || take(r, 1, &p) < 0) return -1;
    if (*p == 0xca) {
        float f;
        uint32_t b32;
        if (take_be(r, 4, &bits) < 0) return -1;
        b32 = (uint32_t)bits;
        memcpy(&f, &b32, sizeof f);
        *v = f;
    } else {
        if (take_be(r, 8, &bits) < 0) return -1;
        memcpy(v, &bits, sizeof *v);
    }
    return 0;
}

int mp_read_bool(mp_reader *r, bool *v) {
    if (mp_peek(r) != MP_BOOL) return -1;
    *v = *r->p++ == 0xc3;
    return 0;
}

static int skip_depth(mp_reader *r, int depth) {
    const uint8_t *p;
    const char *s;
    uint32_t n;
    int64_t i;
    double f;
    bool b;
    if (depth > MP_MAX_DEPTH) return -1;
    switch (mp_peek(r)) {
    case MP_NIL: r->p++; return 0;
    case MP_BOOL: return mp_read_bool(r, &b);
    case MP_INT:
        /* an unsigned 64-bit value above INT64_MAX is still valid msgpack to skip */
        if (*r->p == 0xcf) return take(r, 9, &p);
        return mp_read_int(r, &i);
    case MP_FLOAT: return mp_read_float(r, &f);
    case MP_STR: return mp_read_str(r, &s, &n);
    case MP_BIN: return mp_read_bin(r, &p, &n);
    case MP_ARRAY:
        if (mp_read_array(r, &n) < 0) return -1;
        for (uint32_t k = 0; k < n; k++)
            if (skip_depth(r, depth + 1) < 0) return -1;
        return 0;
    case MP_MAP:
        if (mp_read_map(r, &n) < 0) return -1;
        for (uint32_t k = 0; k < n; k++) {
            if (mp_peek(r) != MP_STR) return -1; /* section 1: string keys only */
            if (skip_depth(r, depth + 1) < 0 || skip_depth(r, depth + 1) < 0) return -1;
        }
        return 0;
    default: { /* ext types: fixext 1/2/4/8/16 or ext 8/16/32, then a type byte */
        uint8_t c = *r->p;
        uint64_t len;
        r->p++;
        if (c >= 0xd4 && c <= 0xd8) len = 1u << (c - 0xd4);
        else if (c >= 0xc7 && c <= 0xc9) {
            if (take_be(r, 1 << (c - 0xc7), &len) < 0) return -1;
        } else return -1; /* 0xc1 is never used */
        return take(r, 1 + (size_t)len, &p);
    }
    }
}

int mp_skip(mp_reader *r) { return skip_depth(r, 0); }

bool utf8_valid(const uint8_t *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        size_t extra;
        uint32_t cp;
        if (c < 0x80) { i++; continue; }
        if (c >= 0xc2 && c <= 0xdf) { extra = 1; cp = c & 0x1f; }
        else if (c >= 0xe0 && c <= 0xef) { extra = 2; cp = c & 0x0f; }
        else if (c >= 0xf0 && c <= 0xf4) { extra = 3; cp = c & 0x07; }
        else return false;
        if (n - i <= extra) return false;
        for (size_t k = 1; k <= extra; k++) {
            if ((s[i + k] & 0xc0) != 0x80) return false;
            cp = (cp << 6) | (s[i + k] & 0x3f);
        }
        /* overlong forms, UTF-16 surrogates and values past U+10FFFF are not UTF-8 */
        if ((extra == 2 && cp < 0x800) || (extra == 3 && cp < 0x10000) ||
            (cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff)
            return false;
        i += extra + 1;
    }
    return true;
}
