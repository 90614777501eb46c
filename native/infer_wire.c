/* infer_wire.c - see infer_wire.h for what a common ModelInferRequest is and why it is read here.
 *
 * The messages read (field numbers of the Open Inference Protocol's grpc_service.proto):
 *   ModelInferRequest { string model_name = 1; string model_version = 2; string id = 3;
 *                       map<string, InferParameter> parameters = 4; repeated InferInputTensor inputs = 5;
 *                       repeated InferRequestedOutputTensor outputs = 6; repeated bytes raw_input_contents = 7; }
 *   InferInputTensor  { string name = 1; string datatype = 2; repeated int64 shape = 3;
 *                       map<string, InferParameter> parameters = 4; InferTensorContents contents = 5; }
 *   InferRequestedOutputTensor { string name = 1; map<string, InferParameter> parameters = 2; }
 * Parameters and contents make a request not common, as does any field not listed. */
#include <string.h>

#include "infer_wire.h"
#include "ms_status.h"
#include "wire_read.h"

/* Reads a length-delimited field's contents into *span (offsets into the whole request). */
static int read_span(cursor *c, uint32_t wt, ms_span *span) {
    cursor inner;
    if (wt != WT_LEN || read_len(c, &inner) != 0) return -1;
    span->offset = inner.pos;
    span->size = inner.end - inner.pos;
    return 0;
}

/* Reads an InferInputTensor: name, datatype and shape only. Returns 0, or -1 when it is not common. */
static int read_input(cursor t, ms_infer_input *in) {
    uint32_t field, wt, seen = 0;
    in->ndims = 0;
    in->name.offset = in->name.size = in->datatype.offset = in->datatype.size = 0;
    while (t.pos < t.end) {
        if (read_tag(&t, &field, &wt) != 0) return -1;
        if (field == 3) {
            if (read_dims(&t, wt, in->dims, &in->ndims, MS_WIRE_MAX_DIMS) != 0) return -1;
        } else if (field > 2 || once(&seen, field) != 0 ||
                   read_span(&t, wt, field == 1 ? &in->name : &in->datatype) != 0) {
            return -1;
        }
    }
    return 0;
}

/* Reads an InferRequestedOutputTensor: its name only. Returns 0, or -1 when it is not common. */
static int read_output(cursor t, ms_span *name) {
    uint32_t field, wt, seen = 0;
    name->offset = name->size = 0;
    while (t.pos < t.end) {
        if (read_tag(&t, &field, &wt) != 0 || field != 1 || once(&seen, field) != 0 || read_span(&t, wt, name) != 0)
            return -1;
    }
    return 0;
}

/* Reads a ModelInferRequest of `size` bytes. inputs and outputs have room for MS_INFER_MAX_TENSORS entries
 * each. On MS_OK, *head holds the request's strings and counts, inputs[k] input k with its raw data (the k-th
 * raw_input_contents entry) and outputs[j] the name of requested output j. MS_EINVAL when the request is not
 * common (the outputs are then meaningless). The caller owns every buffer; nothing is kept. */
int ms_infer_common_parse(const uint8_t *buf, size_t size, ms_infer_head *head, ms_infer_input *inputs,
                          ms_span *outputs) {
    cursor c = {buf, 0, size}, inner;
    uint32_t field, wt, seen = 0;
    uint64_t n_raw = 0;
    memset(head, 0, sizeof *head);
    while (c.pos < c.end) {
        if (read_tag(&c, &field, &wt) != 0) return MS_EINVAL;
        switch (field) {
        case 1:
        case 2:
        case 3: {
            ms_span *text = field == 1 ? &head->model_name : field == 2 ? &head->model_version : &head->id;
            if (once(&seen, field) != 0 || read_span(&c, wt, text) != 0) return MS_EINVAL;
            break;
        }
        case 5:
            if (head->n_inputs == MS_INFER_MAX_TENSORS || wt != WT_LEN || read_len(&c, &inner) != 0 ||
                read_input(inner, &inputs[head->n_inputs]) != 0)
                return MS_EINVAL;
            head->n_inputs++;
            break;
        case 6:
            if (head->n_outputs == MS_INFER_MAX_TENSORS || wt != WT_LEN || read_len(&c, &inner) != 0 ||
                read_output(inner, &outputs[head->n_outputs]) != 0)
                return MS_EINVAL;
            head->n_outputs++;
            break;
        case 7:
            /* raw entries may come before their inputs on the wire: kept in inputs[] by position */
            if (n_raw == MS_INFER_MAX_TENSORS || read_span(&c, wt, &inputs[n_raw].data) != 0) return MS_EINVAL;
            n_raw++;
            break;
        default:
            return MS_EINVAL;
        }
    }
    return head->n_inputs > 0 && n_raw == head->n_inputs ? MS_OK : MS_EINVAL;
}
