/* batch_copy.c - see batch_copy.h for the layout of a batch buffer. */
#include <string.h>

#include "batch_copy.h"

/* Checks that `count` buffers of `sizes[i]` bytes each fit as rows of `row_size` bytes in a buffer of
 * `buf_size` bytes: every size must equal row_size and count * row_size must not overflow nor exceed
 * buf_size. Returns 0 when they fit, -1 otherwise. Reads only `sizes`. */
static int rows_fit(size_t buf_size, size_t row_size, const size_t *sizes, size_t count) {
    if (row_size != 0 && count > buf_size / row_size) return -1;
    for (size_t i = 0; i < count; i++) {
        if (sizes[i] != row_size) return -1;
    }
    return 0;
}

/* Copies instance i (srcs[i], src_sizes[i] bytes) into row i of `dst`, for i < count, and zero-fills the
 * rest of dst: the padding rows of a fixed-size batch (and any tail shorter than a row).
 * Returns 0 on success; -1, with dst untouched, when a source size differs from row_size or the rows do
 * not fit in dst_size bytes. The caller owns every buffer; nothing is kept after the call. */
int ms_gather_rows(void *dst, size_t dst_size, size_t row_size,
                   const void *const *srcs, const size_t *src_sizes, size_t count) {
    if (rows_fit(dst_size, row_size, src_sizes, count) != 0) return -1;
    unsigned char *out = dst;
    for (size_t i = 0; i < count; i++) {
        if (row_size) memcpy(out + i * row_size, srcs[i], row_size);
    }
    size_t used = count * row_size;
    if (dst_size > used) memset(out + used, 0, dst_size - used);
    return 0;
}

/* Copies row i of `src` into dsts[i] (dst_sizes[i] bytes), for i < count; rows past count (padding) are
 * ignored. Returns 0 on success; -1, with no destination written, when a destination size differs from
 * row_size or count rows would read past src_size bytes. The caller owns every buffer. */
int ms_scatter_rows(const void *src, size_t src_size, size_t row_size,
                    void *const *dsts, const size_t *dst_sizes, size_t count) {
    if (rows_fit(src_size, row_size, dst_sizes, count) != 0) return -1;
    const unsigned char *in = src;
    for (size_t i = 0; i < count; i++) {
        if (row_size) memcpy(dsts[i], in + i * row_size, row_size);
    }
    return 0;
}
