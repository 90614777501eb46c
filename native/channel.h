/* channel.h - one master <-> worker channel in one shared-memory segment.
 *
 * Layout (segment offsets, every part 64-byte aligned):
 *     ms_channel header | job entries | done entries | request arena | reply arena
 *
 * The master creates the segment, initialises it with ms_channel_init and hands the worker its file
 * descriptor. A request travels as one message block in the request arena (written by the master) plus one
 * entry in the job queue; the worker takes entries with ms_pop_batch, answers each with a message block in
 * the reply arena and an entry in the done queue (ms_push_done, which also writes the master's eventfd). The
 * master takes done entries with ms_pop_done, copies the reply out, and releases both blocks.
 *
 * Both queues share one robust, process-shared mutex. A process that dies holding it leaves the channel
 * "broken": every later call returns MS_EBROKEN instead of blocking, and the master drops the channel.
 * ms_pop_batch sleeps on a futex (jobs_seq), not on a process-shared condition variable: glibc keeps waiter
 * counts inside a condition variable, so a process killed while waiting on one could make a later signal
 * block for ever, with the lock held. A futex keeps its waiters in the kernel, which forgets a dead one. */
#ifndef MINDSERVE_CHANNEL_H
#define MINDSERVE_CHANNEL_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "arena.h"

/* One queued job (master -> worker) or completion (worker -> master). */
typedef struct {
    uint64_t id;          /* the master's job id, echoed in the completion */
    uint64_t offset;      /* segment offset of the message block's data */
    uint64_t size;        /* bytes of the message */
    uint64_t weight;      /* instances in the job (jobs only): what ms_pop_batch counts */
    uint64_t enqueued_ns; /* CLOCK_MONOTONIC time of the push (jobs only): the batch deadline starts here */
} ms_entry;

/* A ring of entries, guarded by the channel lock. */
typedef struct {
    uint64_t offset;   /* segment offset of the entry array */
    uint64_t capacity; /* entries */
    uint64_t head;     /* entries ever taken */
    uint64_t tail;     /* entries ever added */
    uint64_t weight;   /* sum of the weights of the queued entries */
} ms_queue;

typedef struct {
    uint64_t magic;
    uint64_t size; /* bytes in the segment */
    uint32_t closed;
    uint32_t broken;
    pthread_mutex_t lock;
    _Atomic uint32_t jobs_seq; /* futex word: bumped and woken by every push, close and breakage */
    uint32_t jobs_sleepers;    /* processes in wait_jobs (under the lock): a push with none makes no syscall */
    ms_queue jobs;
    ms_queue done;
    ms_arena requests; /* master allocates, master releases */
    ms_arena replies;  /* worker allocates, master releases */
} ms_channel;

enum { MS_REQUESTS = 0, MS_REPLIES = 1 };

size_t ms_channel_min_size(uint64_t queue_capacity);
int ms_channel_init(void *base, uint64_t size, uint64_t queue_capacity);
int ms_channel_check(const void *base, uint64_t size);
int ms_channel_close(void *base);
int ms_channel_lock(void *base);
void ms_channel_unlock(void *base);

int ms_push_job(void *base, const ms_entry *job);
int ms_pop_batch(void *base, uint64_t max_items, int64_t max_delay_ns, ms_entry *out, size_t out_capacity,
                 size_t *count);
int ms_take_jobs(void *base, ms_entry *out, size_t out_capacity, size_t *count);
int ms_push_done(void *base, const ms_entry *done, int event_fd);
int ms_pop_done(void *base, ms_entry *out, size_t out_capacity, size_t *count);

int ms_alloc(void *base, int which, uint64_t size, uint64_t *data_offset);
int ms_release(void *base, int which, uint64_t data_offset);
int ms_contains(const void *base, int which, uint64_t data_offset, uint64_t size);
uint64_t ms_max_alloc(const void *base, int which);

#endif
