/* fuzz_infer_wire.c - libFuzzer target for the wire reader of ModelInfer requests (infer_wire.c).
 *
 * Any bytes are a request a client may send. The reader must never read outside them, and what it reports must
 * stay inside them: every span it returns lies within the request, every count within its bounds, every dim a
 * non-negative int64. A violation traps, which the fuzzer reports with the input that caused it. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "infer_wire.h"
#include "ms_status.h"

static void check(int condition) {
    if (!condition) __builtin_trap();
}

static void check_span(ms_span span, size_t size) {
    check(span.offset <= size && span.size <= size - span.offset);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    /* a copy of exactly `size` bytes on the heap: a read past it is caught by AddressSanitizer */
    uint8_t *buf = malloc(size ? size : 1);
    if (!buf) return 0;
    memcpy(buf, data, size);

    ms_infer_head head;
    ms_infer_input inputs[MS_INFER_MAX_TENSORS];
    ms_span outputs[MS_INFER_MAX_TENSORS];
    if (ms_infer_common_parse(buf, size, &head, inputs, outputs) == MS_OK) {
        check(head.n_inputs >= 1 && head.n_inputs <= MS_INFER_MAX_TENSORS);
        check(head.n_outputs <= MS_INFER_MAX_TENSORS);
        check_span(head.model_name, size);
        check_span(head.model_version, size);
        check_span(head.id, size);
        for (uint64_t k = 0; k < head.n_inputs; k++) {
            check_span(inputs[k].name, size);
            check_span(inputs[k].datatype, size);
            check_span(inputs[k].data, size);
            check(inputs[k].ndims <= MS_WIRE_MAX_DIMS);
            for (uint64_t d = 0; d < inputs[k].ndims; d++) check(inputs[k].dims[d] <= INT64_MAX);
        }
        for (uint64_t j = 0; j < head.n_outputs; j++) check_span(outputs[j], size);
    }
    free(buf);
    return 0;
}
