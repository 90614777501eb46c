/* infer_wire.h - read a serialized Open Inference Protocol ModelInferRequest without protobuf, for the common
 * request.
 *
 * The common request: raw data (one raw_input_contents entry per input, in the order of inputs), no
 * parameters on the request, its inputs or its requested outputs, no typed contents, at most
 * MS_INFER_MAX_TENSORS inputs and requested outputs and MS_WIRE_MAX_DIMS dims per input. For such a request
 * the reader reports where each string and each input's data lies in the request's own bytes: the master
 * checks them as it checks any request (mindserve._frontends.oip.tensors) and copies rows straight from the
 * request into a worker's arena, with no message objects and no copy of the data in between.
 *
 * Anything else (other fields, malformed wire data, a second occurrence of a singular field) is "not common":
 * the reader returns MS_EINVAL and the caller parses the request with protobuf, which also gives the precise
 * error. Nothing here allocates; every length is checked against the message that encloses it. */
#ifndef MINDSERVE_INFER_WIRE_H
#define MINDSERVE_INFER_WIRE_H

#include <stddef.h>
#include <stdint.h>

#include "predict_wire.h" /* MS_WIRE_MAX_DIMS */

#define MS_INFER_MAX_TENSORS 64 /* more inputs, or requested outputs, than this: not common */

/* Where some bytes lie in the request. */
typedef struct {
    uint64_t offset, size;
} ms_span;

/* The top level of a common request. */
typedef struct {
    ms_span model_name, model_version, id;
    uint64_t n_inputs, n_outputs;
} ms_infer_head;

/* One input of a common request: its strings, its declared shape and its raw data. */
typedef struct {
    ms_span name, datatype, data;
    uint64_t ndims;
    uint64_t dims[MS_WIRE_MAX_DIMS];
} ms_infer_input;

int ms_infer_common_parse(const uint8_t *buf, size_t size, ms_infer_head *head, ms_infer_input *inputs,
                          ms_span *outputs);

#endif
