/* fuzz_predict_wire.c - libFuzzer target for the wire reader of Predict requests (predict_wire.c).
 *
 * Any bytes are a request a client may send. The readers must never read outside them, and what they report
 * must stay inside them: every row they locate lies within the request, every count agrees with the other
 * reader. A violation traps, which the fuzzer reports with the input that caused it. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ms_status.h"
#include "predict_wire.h"

#define MAX_INSTANCES 64

static const char *const NAMES[] = {"x1", "x2", "x"};
static const size_t NAME_SIZES[] = {2, 2, 1};

/* The item size of each DataType, as the master builds its table: 0 for unknown, string and bytes. */
static const uint8_t ITEM_SIZES[MS_WIRE_DTYPES] = {0, 1, 1, 1, 2, 2, 4, 4, 8, 8, 2, 4, 8, 0, 0, 0};

static void check(int condition) {
    if (!condition) __builtin_trap();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    /* a copy of exactly `size` bytes on the heap: a read past it is caught by AddressSanitizer */
    uint8_t *buf = malloc(size ? size : 1);
    if (!buf) return 0;
    memcpy(buf, data, size);

    ms_predict_head counted, head;
    int counted_ok = ms_predict_count_instances(buf, size, &counted) == MS_OK;
    if (counted_ok && counted.spec_size) check(counted.spec_offset + counted.spec_size <= size);
    if (ms_predict_head_parse(buf, size, &head) == MS_OK) {
        check(counted_ok && counted.instances == head.instances); /* a common head is countable wire data */
        check(head.spec_offset + head.spec_size <= size && head.name_offset + head.name_size <= size &&
              head.method_offset + head.method_size <= size);
        if (head.instances > 0 && head.instances <= MAX_INSTANCES) {
            for (size_t n_inputs = 1; n_inputs <= 3; n_inputs++) {
                const char *const *names = n_inputs == 1 ? NAMES + 2 : NAMES;
                const size_t *sizes = n_inputs == 1 ? NAME_SIZES + 2 : NAME_SIZES;
                ms_wire_input inputs[3];
                uint64_t offsets[3 * MAX_INSTANCES];
                size_t n = n_inputs == 3 ? 2 : n_inputs;
                if (ms_predict_common_parse(buf, size, names, sizes, n, ITEM_SIZES, inputs, offsets,
                                            head.instances) != MS_OK)
                    continue;
                for (size_t k = 0; k < n; k++) {
                    check(inputs[k].ndims <= MS_WIRE_MAX_DIMS && inputs[k].row_size > 0);
                    for (uint64_t i = 0; i < head.instances; i++) {
                        uint64_t at = offsets[k * head.instances + i];
                        check(at <= size && inputs[k].row_size <= size - at);
                    }
                }
            }
        }
    }
    free(buf);
    return 0;
}
