/* predict_wire.h - read a serialized MSService PredictRequest without protobuf, for the common request.
 *
 * The common request: every instance carries exactly the method's inputs, each a numeric tensor whose dtype
 * and shape are the same in every instance and whose data is exactly the bytes that shape takes. Such a
 * request is fully described by one dtype, shape and row size per input plus where each instance's row lies
 * in the request's own bytes, so the master can copy rows straight into a worker's arena with no message
 * objects in between.
 *
 * Anything else (other fields, strings, shapes that differ, repeated singular fields, malformed wire data) is
 * "not common": these functions return MS_EINVAL and the caller parses the request with protobuf, which also
 * gives the precise error. Nothing here allocates; every length read from the request is checked against the
 * bytes of the message that encloses it before it is used. */
#ifndef MINDSERVE_PREDICT_WIRE_H
#define MINDSERVE_PREDICT_WIRE_H

#include <stddef.h>
#include <stdint.h>

#define MS_WIRE_MAX_DIMS 8      /* more dims than this: not common */
#define MS_WIRE_MAX_INPUTS 64   /* more inputs than this: not common */
#define MS_WIRE_DTYPES 16       /* DataType codes below this index the item size table */

/* Where the servable spec lies in a request, and how many instances follow. */
typedef struct {
    uint64_t spec_offset, spec_size;     /* the ServableSpec message, as the reply echoes it */
    uint64_t name_offset, name_size;     /* servable_spec.name */
    uint64_t method_offset, method_size; /* servable_spec.method_name */
    uint64_t version;                    /* servable_spec.version_number */
    uint64_t instances;                  /* number of Instance messages */
} ms_predict_head;

/* One input of a common request: what each instance's tensor is. */
typedef struct {
    uint64_t dtype;
    uint64_t ndims;
    uint64_t dims[MS_WIRE_MAX_DIMS];
    uint64_t row_size; /* bytes of one instance's tensor */
} ms_wire_input;

int ms_predict_head_parse(const uint8_t *buf, size_t size, ms_predict_head *head);
int ms_predict_count_instances(const uint8_t *buf, size_t size, ms_predict_head *head);

int ms_predict_common_parse(const uint8_t *buf, size_t size, const char *const *names, const size_t *name_sizes,
                            size_t n_inputs, const uint8_t *item_sizes, ms_wire_input *inputs, uint64_t *offsets,
                            size_t instances);

#endif
