/* predict_wire.c - see predict_wire.h for what a common request is and why it is read here.
 *
 * The messages read (field numbers of the MSService contract):
 *   PredictRequest { ServableSpec servable_spec = 1; repeated Instance instances = 2; }
 *   ServableSpec   { string name = 1; string method_name = 2; uint64 version_number = 3; }
 *   Instance       { map<string, Tensor> items = 1; ... }   (a map entry is { key = 1; value = 2; })
 *   Tensor         { TensorShape shape = 1; DataType dtype = 2; bytes data = 3; ... }
 *   TensorShape    { repeated int64 dims = 1; }
 * Every other field, and a second occurrence of a singular field (which protobuf would merge or overwrite),
 * makes the request not common. */
#include <string.h>

#include "ms_status.h"
#include "predict_wire.h"
#include "wire_read.h"

/* Reads a ServableSpec into head's name, method and version. Returns 0, or -1 when it is not common. */
static int read_spec(cursor spec, ms_predict_head *head) {
    uint32_t field, wt, seen = 0;
    cursor text;
    while (spec.pos < spec.end) {
        if (read_tag(&spec, &field, &wt) != 0 || field > 3 || once(&seen, field) != 0) return -1;
        if (field == 3) {
            if (wt != WT_VARINT || read_varint(&spec, &head->version) != 0) return -1;
            continue;
        }
        if (wt != WT_LEN || read_len(&spec, &text) != 0) return -1;
        if (field == 1) {
            head->name_offset = text.pos;
            head->name_size = text.end - text.pos;
        } else {
            head->method_offset = text.pos;
            head->method_size = text.end - text.pos;
        }
    }
    return 0;
}

/* Reads the top level of a PredictRequest of `size` bytes: where the servable spec and its strings lie,
 * the version and the number of instances (each instance's bounds are checked, not its contents).
 * Returns MS_OK with *head filled, or MS_EINVAL when the request is not common. Reads only buf. */
int ms_predict_head_parse(const uint8_t *buf, size_t size, ms_predict_head *head) {
    cursor c = {buf, 0, size}, inner;
    uint32_t field, wt, seen = 0;
    memset(head, 0, sizeof *head);
    while (c.pos < c.end) {
        if (read_tag(&c, &field, &wt) != 0 || wt != WT_LEN || read_len(&c, &inner) != 0) return MS_EINVAL;
        if (field == 1) {
            if (once(&seen, 1) != 0 || read_spec(inner, head) != 0) return MS_EINVAL;
            head->spec_offset = inner.pos;
            head->spec_size = inner.end - inner.pos;
        } else if (field == 2) {
            head->instances++;
        } else {
            return MS_EINVAL;
        }
    }
    return MS_OK;
}

/* Counts the instances (field 2) of a serialized PredictRequest of `size` bytes, whatever else its top level
 * holds, without reading inside any field, so that the cost of a request is bounded before anything is made of
 * it; head->spec_offset and spec_size tell where its (last) servable spec lies, for the error reply. Fills only
 * those and head->instances. Returns MS_OK, or MS_EINVAL when the top level is not wire data this reader can
 * step over. */
int ms_predict_count_instances(const uint8_t *buf, size_t size, ms_predict_head *head) {
    cursor c = {buf, 0, size};
    uint32_t field, wt;
    memset(head, 0, sizeof *head);
    while (c.pos < c.end) {
        if (read_tag(&c, &field, &wt) != 0) return MS_EINVAL;
        size_t start = c.pos;
        if (skip_value(&c, wt) != 0) return MS_EINVAL;
        if (wt != WT_LEN) continue;
        if (field == 2) {
            head->instances++;
        } else if (field == 1) {
            cursor spec = {buf, start, c.end}, inner = {buf, 0, 0};
            read_len(&spec, &inner); /* cannot fail: skip_value read the same length */
            head->spec_offset = inner.pos;
            head->spec_size = inner.end - inner.pos;
        }
    }
    return MS_OK;
}

/* Reads a TensorShape's dims into in->dims. Returns -1 when there are more than MS_WIRE_MAX_DIMS, one is
 * negative, or another field is present. */
static int read_shape(cursor shape, ms_wire_input *in) {
    uint32_t field, wt;
    while (shape.pos < shape.end) {
        if (read_tag(&shape, &field, &wt) != 0 || field != 1 ||
            read_dims(&shape, wt, in->dims, &in->ndims, MS_WIRE_MAX_DIMS) != 0)
            return -1;
    }
    return 0;
}

/* Reads a Tensor: its dtype and dims into *in, and where its data lies into *data_offset. Checks that the
 * dtype is numeric (a non-zero entry of item_sizes) and that the data is exactly the bytes the shape takes
 * (computed without overflow) and not empty. Returns 0, or -1 when it is not common. */
static int read_tensor(cursor t, const uint8_t *item_sizes, ms_wire_input *in, uint64_t *data_offset) {
    uint32_t field, wt, seen = 0;
    cursor inner = {t.buf, 0, 0};
    in->dtype = 0;
    in->ndims = 0;
    in->row_size = 0;
    while (t.pos < t.end) {
        if (read_tag(&t, &field, &wt) != 0 || field > 3 || once(&seen, field) != 0) return -1;
        if (field == 2) {
            if (wt != WT_VARINT || read_varint(&t, &in->dtype) != 0) return -1;
        } else if (wt != WT_LEN || read_len(&t, &inner) != 0) {
            return -1;
        } else if (field == 1) {
            if (read_shape(inner, in) != 0) return -1;
        } else {
            *data_offset = inner.pos;
            in->row_size = inner.end - inner.pos;
        }
    }
    if (!(seen & (1u << 3)) || in->row_size == 0 || in->dtype >= MS_WIRE_DTYPES || item_sizes[in->dtype] == 0)
        return -1;
    uint64_t expected = item_sizes[in->dtype];
    for (uint64_t d = 0; d < in->ndims; d++)
        if (__builtin_mul_overflow(expected, in->dims[d], &expected)) return -1;
    return expected == in->row_size ? 0 : -1;
}

/* Reports whether two inputs have the same dtype and shape (and so the same row size). */
static int same_input(const ms_wire_input *a, const ms_wire_input *b) {
    return a->dtype == b->dtype && a->ndims == b->ndims && a->row_size == b->row_size &&
           memcmp(a->dims, b->dims, a->ndims * sizeof a->dims[0]) == 0;
}

/* The index of `key` among names[0..n), or -1. */
static int find_name(cursor key, const char *const *names, const size_t *name_sizes, size_t n) {
    size_t len = key.end - key.pos;
    for (size_t k = 0; k < n; k++)
        if (name_sizes[k] == len && memcmp(names[k], key.buf + key.pos, len) == 0) return (int)k;
    return -1;
}

/* Reads instance `index` of a request: each map entry must name an input not yet seen in this instance
 * and hold a common tensor, the same as instance 0's for that input. Fills inputs (from instance 0) and
 * offsets[k * instances + index]. Returns 0, or -1 when it is not common. */
static int read_instance(cursor inst, const char *const *names, const size_t *name_sizes, size_t n_inputs,
                         const uint8_t *item_sizes, ms_wire_input *inputs, uint64_t *offsets, size_t instances,
                         size_t index) {
    uint64_t seen_inputs = 0;
    uint32_t field, wt;
    cursor entry;
    while (inst.pos < inst.end) {
        if (read_tag(&inst, &field, &wt) != 0 || field != 1 || wt != WT_LEN || read_len(&inst, &entry) != 0)
            return -1;
        cursor key = {entry.buf, 0, 0}, value = {entry.buf, 0, 0};
        uint32_t seen = 0;
        while (entry.pos < entry.end) {
            if (read_tag(&entry, &field, &wt) != 0 || field < 1 || field > 2 || once(&seen, field) != 0 ||
                wt != WT_LEN || read_len(&entry, field == 1 ? &key : &value) != 0)
                return -1;
        }
        int k = seen == 6 ? find_name(key, names, name_sizes, n_inputs) : -1;
        if (k < 0 || (seen_inputs & (1ull << k))) return -1;
        seen_inputs |= 1ull << k;
        ms_wire_input tensor;
        if (read_tensor(value, item_sizes, &tensor, &offsets[(size_t)k * instances + index]) != 0) return -1;
        if (index == 0)
            inputs[k] = tensor;
        else if (!same_input(&inputs[k], &tensor))
            return -1;
    }
    return seen_inputs == (n_inputs == 64 ? UINT64_MAX : (1ull << n_inputs) - 1) ? 0 : -1;
}

/* Reads a whole PredictRequest of `size` bytes with `instances` instances (as ms_predict_head_parse counted)
 * against the method's input names (names[k], name_sizes[k] bytes, k < n_inputs). item_sizes has
 * MS_WIRE_DTYPES entries: the item size of each numeric DataType, 0 for the others.
 * On MS_OK, inputs[k] is input k's dtype, shape and row size, and offsets[k * instances + i] is where
 * instance i's data for input k starts in buf. MS_EINVAL when the request is not common (the outputs are
 * then meaningless). The caller owns every buffer; nothing is kept. */
int ms_predict_common_parse(const uint8_t *buf, size_t size, const char *const *names, const size_t *name_sizes,
                            size_t n_inputs, const uint8_t *item_sizes, ms_wire_input *inputs, uint64_t *offsets,
                            size_t instances) {
    if (n_inputs == 0 || n_inputs > MS_WIRE_MAX_INPUTS || instances == 0) return MS_EINVAL;
    cursor c = {buf, 0, size}, inner;
    uint32_t field, wt;
    size_t index = 0;
    while (c.pos < c.end) {
        if (read_tag(&c, &field, &wt) != 0 || wt != WT_LEN || read_len(&c, &inner) != 0) return MS_EINVAL;
        if (field != 2) continue; /* the spec, read by ms_predict_head_parse */
        if (index == instances ||
            read_instance(inner, names, name_sizes, n_inputs, item_sizes, inputs, offsets, instances, index) != 0)
            return MS_EINVAL;
        index++;
    }
    return index == instances ? MS_OK : MS_EINVAL;
}
