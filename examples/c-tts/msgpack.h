/* A small msgpack writer and reader: only what the voxmesh messages need
 * (docs/protocol.md section 1: maps with string keys, str, int, bool, float, bin,
 * arrays, nil). Written from the msgpack spec, not from a library.
 *
 * The writer appends to a fixed buffer and remembers an overflow instead of failing
 * each call; check mp_buf.failed once at the end. The reader is a cursor over one
 * message body: every read checks the bounds and the type and returns -1 on anything
 * unexpected, so a malformed body can never make us read past its end. */
#ifndef VXM_MSGPACK_H
#define VXM_MSGPACK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* --- writer --------------------------------------------------------------------------- */

typedef struct {
    uint8_t *data;
    size_t len, cap;
    bool failed; /* something did not fit: do not send this buffer */
} mp_buf;

void mp_init(mp_buf *b, uint8_t *storage, size_t cap);
void mp_map(mp_buf *b, uint32_t entries);
void mp_array(mp_buf *b, uint32_t items);
void mp_str(mp_buf *b, const char *s);
void mp_strn(mp_buf *b, const char *s, size_t n);
void mp_int(mp_buf *b, int64_t v);
void mp_bool(mp_buf *b, bool v);
void mp_float(mp_buf *b, double v);
void mp_bin(mp_buf *b, const void *p, size_t n);
void mp_nil(mp_buf *b);

/* --- reader --------------------------------------------------------------------------- */

typedef enum {
    MP_NIL, MP_BOOL, MP_INT, MP_FLOAT, MP_STR, MP_BIN, MP_ARRAY, MP_MAP, MP_OTHER, MP_END
} mp_type;

typedef struct {
    const uint8_t *p, *end;
} mp_reader;

/* The type of the next value (MP_END when the body is used up, MP_OTHER for what the
 * protocol never uses: ext types, and the reserved byte 0xc1). */
mp_type mp_peek(const mp_reader *r);
int mp_read_map(mp_reader *r, uint32_t *entries);
int mp_read_array(mp_reader *r, uint32_t *items);
/* A string as a pointer into the body (not NUL-terminated); -1 if it is not valid UTF-8. */
int mp_read_str(mp_reader *r, const char **s, uint32_t *len);
int mp_read_bin(mp_reader *r, const uint8_t **p, uint32_t *len);
int mp_read_int(mp_reader *r, int64_t *v);     /* a bool is not an int */
int mp_read_float(mp_reader *r, double *v);    /* a float, or an int (section 1: "float") */
int mp_read_bool(mp_reader *r, bool *v);
/* Skip one value of any type (nested at most MP_MAX_DEPTH deep). */
int mp_skip(mp_reader *r);

#define MP_MAX_DEPTH 32

bool utf8_valid(const uint8_t *s, size_t n);

#endif
