/* batch_copy.h - gather instance tensors into one batch buffer and scatter a batch back into instances.
 *
 * A batch buffer is rows of `row_size` bytes, row i being instance i. A source (gather) or destination
 * (scatter) holds one or more whole rows back to back: one instance, or a request's instances stacked. These
 * functions move the rows with one memcpy per source or destination and no Python in between, so callers
 * run them with the GIL released.
 *
 * ms_interleave_rows goes the other way for a wire format that repeats per instance: record i is `head`,
 * then for each part k its prefix and row i of column k (a reply's instances, each framed the same). */
#ifndef MINDSERVE_BATCH_COPY_H
#define MINDSERVE_BATCH_COPY_H

#include <stddef.h>
#include <stdint.h>

int ms_gather_rows(void *dst, size_t dst_size, size_t row_size,
                   const void *const *srcs, const size_t *src_sizes, size_t count);

int ms_scatter_rows(const void *src, size_t src_size, size_t row_size,
                    void *const *dsts, const size_t *dst_sizes, size_t count);

int ms_gather_at(void *dst, size_t dst_size, const void *src, size_t src_size, const uint64_t *offsets,
                 size_t count, size_t row_size);

int64_t ms_interleave_rows(void *dst, size_t dst_size, const void *head, size_t head_size, size_t count,
                           size_t parts, const void *const *prefixes, const size_t *prefix_sizes,
                           const void *const *columns, const size_t *row_sizes, const size_t *column_sizes);

#endif
