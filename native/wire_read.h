/* wire_read.h - reading protobuf wire data in place: the small steps the request readers (predict_wire.c,
 * infer_wire.c) are made of. Every step checks each length it reads against the end of the message that
 * encloses it, and reports -1 rather than read past it. */
#ifndef MINDSERVE_WIRE_READ_H
#define MINDSERVE_WIRE_READ_H

#include <stddef.h>
#include <stdint.h>

enum { WT_VARINT = 0, WT_LEN = 2 }; /* the wire types a common request uses */

/* A read position inside one message: bytes [pos, end) of buf are still to be read. */
typedef struct {
    const uint8_t *buf;
    size_t pos;
    size_t end;
} cursor;

/* Reads one varint. Returns 0 and advances, or -1 when it runs past the message or is not a valid
 * 64-bit varint (more than 10 bytes, or bits beyond 64). */
static inline int read_varint(cursor *c, uint64_t *out) {
    uint64_t value = 0;
    for (unsigned shift = 0; shift < 70; shift += 7) {
        if (c->pos >= c->end) return -1;
        uint8_t byte = c->buf[c->pos++];
        if (shift == 63 && byte > 1) return -1;
        value |= (uint64_t)(byte & 0x7f) << shift;
        if (!(byte & 0x80)) {
            *out = value;
            return 0;
        }
    }
    return -1;
}

/* Reads a field's tag. Returns 0 with its number and wire type, -1 on a bad tag (number 0 or too large). */
static inline int read_tag(cursor *c, uint32_t *field, uint32_t *wire_type) {
    uint64_t tag;
    if (read_varint(c, &tag) != 0 || tag > UINT32_MAX || (tag >> 3) == 0) return -1;
    *field = (uint32_t)(tag >> 3);
    *wire_type = (uint32_t)(tag & 7);
    return 0;
}

/* Reads the length of a length-delimited field and returns its contents as a cursor of their own,
 * advancing past them. Returns -1 when the length reaches past the enclosing message. */
static inline int read_len(cursor *c, cursor *inner) {
    uint64_t len;
    if (read_varint(c, &len) != 0 || len > c->end - c->pos) return -1;
    inner->buf = c->buf;
    inner->pos = c->pos;
    inner->end = c->pos + (size_t)len;
    c->pos = inner->end;
    return 0;
}

/* Marks singular field `field` (below 32) as seen in *seen. Returns -1 when it was seen before. */
static inline int once(uint32_t *seen, uint32_t field) {
    uint32_t bit = 1u << field;
    if (*seen & bit) return -1;
    *seen |= bit;
    return 0;
}

/* Skips the value of a field of wire type `wt` (the tag already read). Returns -1 for a group (wire types 3
 * and 4, which no message read here holds) or a value that runs past the message. */
static inline int skip_value(cursor *c, uint32_t wt) {
    uint64_t ignored;
    cursor inner;
    switch (wt) {
    case WT_VARINT: return read_varint(c, &ignored);
    case WT_LEN: return read_len(c, &inner);
    case 1: /* fixed64 */
    case 5: /* fixed32 */
        if ((wt == 1 ? 8u : 4u) > c->end - c->pos) return -1;
        c->pos += wt == 1 ? 8u : 4u;
        return 0;
    default: return -1;
    }
}


/* Reads one occurrence of a repeated int64 field of dims (tag already read, wire type `wt`), packed or not
 * (protobuf accepts both), appending to dims[*ndims]. Returns -1 when a dim is negative as an int64, more
 * than `max_dims` are given, or the wire type is neither. */
static inline int read_dims(cursor *c, uint32_t wt, uint64_t *dims, uint64_t *ndims, uint64_t max_dims) {
    uint64_t dim;
    cursor packed;
    if (wt == WT_VARINT) {
        if (read_varint(c, &dim) != 0 || dim > INT64_MAX || *ndims == max_dims) return -1;
        dims[(*ndims)++] = dim;
        return 0;
    }
    if (wt != WT_LEN || read_len(c, &packed) != 0) return -1;
    while (packed.pos < packed.end) {
        if (read_varint(&packed, &dim) != 0 || dim > INT64_MAX || *ndims == max_dims) return -1;
        dims[(*ndims)++] = dim;
    }
    return 0;
}

#endif
