/* batch_copy.c - see batch_copy.h for the layout of a batch buffer. */
#include <stdint.h>
#include <string.h>

#include "batch_copy.h"
#include "ms_status.h"

/* Checks that `count` pieces of `sizes[i]` bytes, each a whole number of rows of `row_size` bytes, fit
 * back to back in `buf_size` bytes. Stores their total in *total. Returns MS_OK when they fit, MS_EINVAL when
 * a size is not whole rows or the total overflows or exceeds buf_size. Reads only `sizes`. */
static int rows_fit(size_t buf_size, size_t row_size, const size_t *sizes, size_t count, size_t *total) {
    size_t sum = 0;
    for (size_t i = 0; i < count; i++) {
        if (row_size ? sizes[i] % row_size != 0 : sizes[i] != 0) return MS_EINVAL;
        if (sizes[i] > buf_size - sum) return MS_EINVAL; /* sum <= buf_size holds here, so no overflow */
        sum += sizes[i];
    }
    *total = sum;
    return MS_OK;
}

/* Copies srcs[0..count) (src_sizes[i] bytes each, whole rows of `row_size`) back to back into `dst` and
 * zero-fills the rest of dst: the padding rows of a fixed-size batch.
 * Returns MS_OK on success; MS_EINVAL, with dst untouched, when a source is not whole rows or they do not fit
 * in dst_size bytes. The caller owns every buffer; nothing is kept after the call. */
int ms_gather_rows(void *dst, size_t dst_size, size_t row_size,
                   const void *const *srcs, const size_t *src_sizes, size_t count) {
    size_t used;
    if (rows_fit(dst_size, row_size, src_sizes, count, &used) != MS_OK) return MS_EINVAL;
    unsigned char *out = dst;
    for (size_t i = 0; i < count; i++) {
        if (src_sizes[i]) memcpy(out, srcs[i], src_sizes[i]);
        out += src_sizes[i];
    }
    if (dst_size > used) memset(out, 0, dst_size - used);
    return MS_OK;
}

/* Copies the rows of `src` in order into dsts[0..count) (dst_sizes[i] bytes each, whole rows of
 * `row_size`); rows past the last destination (padding) are ignored. Returns MS_OK on success; MS_EINVAL, with
 * no destination written, when a destination is not whole rows or they would read past src_size bytes. The
 * caller owns every buffer. */
int ms_scatter_rows(const void *src, size_t src_size, size_t row_size,
                    void *const *dsts, const size_t *dst_sizes, size_t count) {
    size_t used;
    if (rows_fit(src_size, row_size, dst_sizes, count, &used) != MS_OK) return MS_EINVAL;
    const unsigned char *in = src;
    for (size_t i = 0; i < count; i++) {
        if (dst_sizes[i]) memcpy(dsts[i], in, dst_sizes[i]);
        in += dst_sizes[i];
    }
    return MS_OK;
}

/* Copies `count` rows of `row_size` bytes, row i read at src + offsets[i], back to back into `dst`: the rows
 * a request carries in place (see predict_wire.h) become one stacked column. Returns MS_OK on success;
 * MS_EINVAL, with dst untouched, when the rows do not fit in dst_size bytes or a row reaches past src_size
 * bytes. The caller owns every buffer. */
int ms_gather_at(void *dst, size_t dst_size, const void *src, size_t src_size, const uint64_t *offsets,
                 size_t count, size_t row_size) {
    if (row_size && count > dst_size / row_size) return MS_EINVAL;
    for (size_t i = 0; i < count; i++)
        if (row_size > src_size || offsets[i] > src_size - row_size) return MS_EINVAL;
    unsigned char *out = dst;
    const unsigned char *in = src;
    for (size_t i = 0; i < count; i++, out += row_size) memcpy(out, in + offsets[i], row_size);
    return MS_OK;
}

/* Writes `count` records back to back into `dst`: record i is `head` (head_size bytes), then for each part
 * k in 0..parts, prefixes[k] (prefix_sizes[k] bytes) and row i of columns[k] (rows of row_sizes[k] bytes,
 * back to back in column_sizes[k] bytes). Returns the bytes written, count * record size; MS_EINVAL, with dst
 * untouched, when they exceed dst_size, a column holds fewer than `count` rows, or the sizes overflow. The
 * caller owns every buffer. */
int64_t ms_interleave_rows(void *dst, size_t dst_size, const void *head, size_t head_size, size_t count,
                           size_t parts, const void *const *prefixes, const size_t *prefix_sizes,
                           const void *const *columns, const size_t *row_sizes, const size_t *column_sizes) {
    size_t record = head_size;
    for (size_t k = 0; k < parts; k++) {
        if (prefix_sizes[k] > SIZE_MAX - record || row_sizes[k] > SIZE_MAX - record - prefix_sizes[k])
            return MS_EINVAL;
        if (row_sizes[k] && count > column_sizes[k] / row_sizes[k]) return MS_EINVAL; /* rows it lacks */
        record += prefix_sizes[k] + row_sizes[k];
    }
    if (record == 0) return 0; /* nothing to write, however many records */
    if (count > dst_size / record) return MS_EINVAL;
    if (count * record > INT64_MAX) return MS_EINVAL;
    unsigned char *out = dst;
    for (size_t i = 0; i < count; i++) {
        if (head_size) memcpy(out, head, head_size);
        out += head_size;
        for (size_t k = 0; k < parts; k++) {
            if (prefix_sizes[k]) memcpy(out, prefixes[k], prefix_sizes[k]);
            out += prefix_sizes[k];
            if (row_sizes[k]) memcpy(out, (const unsigned char *)columns[k] + i * row_sizes[k], row_sizes[k]);
            out += row_sizes[k];
        }
    }
    return (int64_t)(count * record);
}
