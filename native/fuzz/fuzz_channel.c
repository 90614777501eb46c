/* fuzz_channel.c - libFuzzer target for the channel (channel.c, arena.c) as the master uses it against a
 * hostile worker.
 *
 * The input is a program of steps. Between the master's calls a step may overwrite any bytes of the shared
 * segment (queue heads, tails, entries, block headers, arena data), as a worker running hostile code can; the
 * lock word is kept free (a stranger's pid there only makes the master wait out its bound or find the channel
 * broken, see channel.h). The master's calls must never touch memory outside the segment, whatever is there:
 * a completion it takes must lie inside the reply arena once ms_contains says so, and every call returns a
 * status of the contract. Then the worker's attach is fuzzed on a header made of the input. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "channel.h"
#include "ms_status.h"

#define QUEUE 8
#define SEGMENT (64u * 1024u)
#define MAX_LIVE 32

typedef struct {
    const uint8_t *data;
    size_t size;
    size_t pos;
} program;

static uint64_t take(program *p, size_t bytes) {
    uint64_t value = 0;
    for (size_t i = 0; i < bytes && p->pos < p->size; i++) value |= (uint64_t)p->data[p->pos++] << (8 * i);
    return value;
}

static void check(int condition) {
    if (!condition) __builtin_trap();
}

static void check_status(int status) {
    check(status == MS_OK || status == MS_EINVAL || status == MS_EFULL || status == MS_ETOOBIG ||
          status == MS_ECLOSED || status == MS_EBROKEN || status == MS_ECORRUPT || status == MS_ETIMEDOUT);
}

/* The hostile worker: writes up to 16 bytes of the program at an offset of the segment, sparing the lock. */
static void scribble(program *p, unsigned char *seg) {
    uint64_t at = take(p, 2) % SEGMENT;
    size_t n = (size_t)(take(p, 1) % 17);
    for (size_t i = 0; i < n && at + i < SEGMENT; i++) seg[at + i] = (unsigned char)take(p, 1);
    __atomic_store_n(&((ms_channel *)seg)->lock, 0, __ATOMIC_RELAXED);
}

static void run_master(program *p, unsigned char *seg) {
    ms_view view;
    check(ms_channel_init(&view, seg, SEGMENT, QUEUE) == MS_OK);
    uint64_t live[MAX_LIVE];
    size_t n_live = 0;
    uint64_t next_id = 1;
    for (int step = 0; step < 64 && p->pos < p->size; step++) {
        switch (take(p, 1) % 6) {
        case 0:
            scribble(p, seg);
            break;
        case 1: { /* a request block and its job */
            uint64_t offset, size = take(p, 2) % (SEGMENT / 2);
            int status = ms_alloc(&view, MS_REQUESTS, size, &offset);
            check_status(status);
            if (status != MS_OK) break;
            check(ms_contains(&view, MS_REQUESTS, offset, size));
            memset(seg + offset, 0xAB, size);
            ms_entry job = {next_id++, offset, size, 1 + take(p, 1) % 4, 0};
            status = ms_push_job(&view, &job);
            check_status(status);
            if (n_live < MAX_LIVE) live[n_live++] = offset;
            break;
        }
        case 2: { /* completions: each checked before its bytes are read, then both blocks released */
            ms_entry done[QUEUE];
            size_t count = 0;
            int status = ms_pop_done(&view, done, QUEUE, &count);
            check_status(status);
            check(count <= QUEUE);
            for (size_t i = 0; status == MS_OK && i < count; i++) {
                if (!ms_contains(&view, MS_REPLIES, done[i].offset, done[i].size)) continue;
                unsigned char sum = 0; /* every byte read, as the master copies a reply out */
                for (uint64_t b = 0; b < done[i].size; b++) sum ^= seg[done[i].offset + b];
                __asm__ volatile("" : : "r"(sum)); /* kept: the reads are what is checked */
                check_status(ms_release(&view, MS_REPLIES, done[i].offset));
            }
            break;
        }
        case 3: /* a request block released, as after its reply (or an offset of the program's) */
            if (n_live && take(p, 1) % 2) {
                check_status(ms_release(&view, MS_REQUESTS, live[--n_live]));
            } else {
                check_status(ms_release(&view, MS_REQUESTS, take(p, 4)));
            }
            break;
        case 4: { /* the jobs a dead worker never took */
            ms_entry jobs[QUEUE];
            size_t count = 0;
            int status = ms_take_jobs(&view, jobs, QUEUE, &count);
            check_status(status);
            check(count <= QUEUE);
            break;
        }
        default:
            check_status(ms_channel_set_backlog(&view, (int)(take(p, 1) & 1)));
            break;
        }
    }
    check_status(ms_channel_close(&view));
}

/* The worker's attach: a header of the program's bytes must be refused or give a layout inside the segment,
 * where an allocation in the reply arena lands inside the segment too. */
static void run_attach(program *p, unsigned char *seg) {
    memset(seg, 0, SEGMENT);
    ms_view master;
    check(ms_channel_init(&master, seg, SEGMENT, QUEUE) == MS_OK);
    for (size_t i = 0; i < sizeof(ms_channel) && p->pos < p->size; i++)
        if (take(p, 1) & 1) seg[i] = (unsigned char)take(p, 1);
    __atomic_store_n(&((ms_channel *)seg)->lock, 0, __ATOMIC_RELAXED);
    ms_view worker;
    int status = ms_channel_attach(&worker, seg, SEGMENT);
    check_status(status);
    if (status != MS_OK) return;
    uint64_t offset, size = take(p, 2);
    if (ms_alloc(&worker, MS_REPLIES, size, &offset) == MS_OK) {
        check(offset <= SEGMENT && size <= SEGMENT - offset);
        memset(seg + offset, 0xCD, size);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    unsigned char *seg = aligned_alloc(64, SEGMENT);
    if (!seg) return 0;
    memset(seg, 0, SEGMENT);
    program p = {data, size, 0};
    run_master(&p, seg);
    run_attach(&p, seg);
    free(seg);
    return 0;
}
