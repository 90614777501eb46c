/* channel.c - see channel.h for the layout and who writes what. */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "channel.h"
#include "ms_status.h"

#define MS_CHANNEL_MAGIC 0x6d696e6473727632ull /* "mindsrv2": the layout version is part of it */

static uint64_t align_up(uint64_t n) { return (n + MS_ALIGN - 1) & ~(uint64_t)(MS_ALIGN - 1); }

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static ms_entry *entries(ms_channel *ch, const ms_queue *q) {
    return (ms_entry *)((unsigned char *)ch + q->offset);
}

/* Bytes needed by the header and both queues, before the arenas. */
static uint64_t fixed_size(uint64_t queue_capacity) {
    return align_up(sizeof(ms_channel)) + 2 * align_up(queue_capacity * sizeof(ms_entry));
}

/* The smallest segment that holds a channel with `queue_capacity` entries per queue and two arenas of one
 * page each. */
size_t ms_channel_min_size(uint64_t queue_capacity) {
    return (size_t)(fixed_size(queue_capacity) + 2 * 4096);
}

/* Master side: lays out a fresh channel over the `size` bytes at `base` (zero-filled, as a new segment is),
 * with `queue_capacity` entries per queue and the rest split evenly between the two arenas.
 * Returns MS_OK, MS_EINVAL when the segment is too small or the capacity is 0 or absurd, or MS_ESYS when the
 * process-shared mutex cannot be made (errno is set). */
int ms_channel_init(void *base, uint64_t size, uint64_t queue_capacity) {
    if (queue_capacity == 0 || queue_capacity > (1u << 20) || size < ms_channel_min_size(queue_capacity))
        return MS_EINVAL;
    ms_channel *ch = base;
    memset(ch, 0, sizeof(*ch));
    ch->size = size;
    uint64_t pos = align_up(sizeof(ms_channel));
    ms_queue *queues[2] = {&ch->jobs, &ch->done};
    for (int i = 0; i < 2; i++) {
        queues[i]->offset = pos;
        queues[i]->capacity = queue_capacity;
        pos += align_up(queue_capacity * sizeof(ms_entry));
    }
    uint64_t arena_size = ((size - pos) / 2) & ~(uint64_t)(MS_ALIGN - 1);
    ms_arena_init(&ch->requests, pos, arena_size);
    ms_arena_init(&ch->replies, pos + arena_size, arena_size);

    pthread_mutexattr_t mattr;
    int err = pthread_mutexattr_init(&mattr);
    if (!err) err = pthread_mutexattr_setpshared(&mattr, PTHREAD_PROCESS_SHARED);
    if (!err) err = pthread_mutexattr_setrobust(&mattr, PTHREAD_MUTEX_ROBUST);
    if (!err) err = pthread_mutex_init(&ch->lock, &mattr);
    pthread_mutexattr_destroy(&mattr);
    if (err) {
        errno = err;
        return MS_ESYS;
    }
    ch->magic = MS_CHANNEL_MAGIC; /* last: a half-made channel never passes ms_channel_check */
    return MS_OK;
}

/* Checks that a queue's entry array lies inside the segment, after the header. */
static int queue_fits(const ms_queue *q, uint64_t size) {
    uint64_t bytes;
    if (q->capacity == 0 || __builtin_mul_overflow(q->capacity, sizeof(ms_entry), &bytes)) return 0;
    return q->offset >= sizeof(ms_channel) && q->offset <= size && bytes <= size - q->offset;
}

static int arena_fits(const ms_arena *a, uint64_t size) {
    return a->offset % MS_ALIGN == 0 && a->capacity % MS_ALIGN == 0 && a->capacity >= 2 * MS_ALIGN &&
           a->offset <= size && a->capacity <= size - a->offset;
}

/* Worker side, after mapping a segment it was handed: checks that it holds a channel whose every part lies
 * inside its `size` bytes, so that no later offset computed from the header reaches outside the mapping.
 * Returns MS_OK or MS_ECORRUPT. */
int ms_channel_check(const void *base, uint64_t size) {
    const ms_channel *ch = base;
    if (size < sizeof(ms_channel) || ch->magic != MS_CHANNEL_MAGIC || ch->size != size) return MS_ECORRUPT;
    if (!queue_fits(&ch->jobs, size) || !queue_fits(&ch->done, size)) return MS_ECORRUPT;
    if (!arena_fits(&ch->requests, size) || !arena_fits(&ch->replies, size)) return MS_ECORRUPT;
    return MS_OK;
}

/* Bumps jobs_seq, so that a waiter that read it before does not sleep, and tells whether anyone sleeps on
 * it (wake_sleepers is then due once the lock is released). Called with the lock held. */
static int bump_jobs(ms_channel *ch) {
    atomic_fetch_add_explicit(&ch->jobs_seq, 1, memory_order_release);
    return ch->jobs_sleepers > 0;
}

/* Wakes up to `n` processes sleeping in wait_jobs (a shared futex: no FUTEX_PRIVATE_FLAG). Called after
 * bump_jobs, best without the lock: a woken worker then finds the lock free instead of sleeping on it. */
static void wake_sleepers(ms_channel *ch, int n) {
    syscall(SYS_futex, (uint32_t *)&ch->jobs_seq, FUTEX_WAKE, n, NULL, NULL, 0);
}

/* Takes the channel lock. Returns MS_OK with the lock held, or MS_EBROKEN without it when the channel is
 * broken (now or before: a process died holding the lock, so the queues may be half-updated). */
int ms_channel_lock(void *base) {
    ms_channel *ch = base;
    int err = pthread_mutex_lock(&ch->lock);
    if (err == EOWNERDEAD) {
        ch->broken = 1;
        pthread_mutex_consistent(&ch->lock);
        bump_jobs(ch);
        pthread_mutex_unlock(&ch->lock);
        wake_sleepers(ch, INT_MAX); /* the dead process may have been counted as a sleeper: wake regardless */
        return MS_EBROKEN;
    }
    if (err) return MS_EBROKEN; /* ENOTRECOVERABLE, or a lock that is not one */
    if (ch->broken) {
        pthread_mutex_unlock(&ch->lock);
        return MS_EBROKEN;
    }
    return MS_OK;
}

void ms_channel_unlock(void *base) {
    pthread_mutex_unlock(&((ms_channel *)base)->lock);
}

/* Appends `e` to queue `q` (lock held). Returns MS_OK or MS_EFULL. */
static int queue_push(ms_channel *ch, ms_queue *q, const ms_entry *e) {
    if (q->tail - q->head >= q->capacity) return MS_EFULL;
    entries(ch, q)[q->tail % q->capacity] = *e;
    q->tail++;
    q->weight += e->weight;
    return MS_OK;
}

/* Moves up to `cap` entries from the front of `q` to `out` (lock held), stopping before the entry that
 * would take the total weight past `max_weight` (0: no limit); the first entry is always taken. */
static size_t queue_take(ms_channel *ch, ms_queue *q, uint64_t max_weight, ms_entry *out, size_t cap) {
    size_t n = 0;
    uint64_t taken = 0;
    while (n < cap && q->head < q->tail) {
        const ms_entry *e = &entries(ch, q)[q->head % q->capacity];
        if (n > 0 && max_weight && taken + e->weight > max_weight) break;
        out[n++] = *e;
        taken += e->weight;
        q->head++;
        q->weight -= e->weight;
    }
    return n;
}

/* Master side: marks the channel closed and wakes the worker; ms_pop_batch then returns MS_ECLOSED once the
 * jobs already queued are taken. Returns MS_OK or MS_EBROKEN. */
int ms_channel_close(void *base) {
    ms_channel *ch = base;
    int status = ms_channel_lock(base);
    if (status != MS_OK) return status;
    ch->closed = 1;
    bump_jobs(ch);
    ms_channel_unlock(base);
    wake_sleepers(ch, INT_MAX);
    return MS_OK;
}

/* Master side: queues a job (its enqueued_ns is stamped here) and wakes the worker.
 * Returns MS_OK, MS_EFULL when the queue holds `capacity` jobs, MS_ECLOSED, or MS_EBROKEN. */
int ms_push_job(void *base, const ms_entry *job) {
    ms_channel *ch = base;
    int status = ms_channel_lock(base);
    if (status != MS_OK) return status;
    ms_entry e = *job;
    e.enqueued_ns = now_ns();
    status = ch->closed ? MS_ECLOSED : queue_push(ch, &ch->jobs, &e);
    int sleepers = status == MS_OK && bump_jobs(ch);
    ms_channel_unlock(base);
    if (sleepers) wake_sleepers(ch, 1);
    return status;
}

/* Sleeps until a push, close or breakage wakes it, until `deadline_ns` (CLOCK_MONOTONIC), or without end for
 * 0; call it with the lock held. The lock is released while sleeping; jobs_seq is read and the sleeper
 * counted under it, so a push made between the unlock and the sleep makes the futex wait return at once. Returns MS_OK with the lock held (woken, timed out or
 * interrupted: the caller checks its condition again), or MS_EBROKEN with the lock released. */
static int wait_jobs(ms_channel *ch, uint64_t deadline_ns) {
    uint32_t seq = atomic_load_explicit(&ch->jobs_seq, memory_order_relaxed);
    struct timespec ts = {(time_t)(deadline_ns / 1000000000ull), (long)(deadline_ns % 1000000000ull)};
    ch->jobs_sleepers++;
    ms_channel_unlock(ch);
    /* FUTEX_WAIT_BITSET takes an absolute CLOCK_MONOTONIC deadline; NULL waits without end */
    syscall(SYS_futex, (uint32_t *)&ch->jobs_seq, FUTEX_WAIT_BITSET, seq, deadline_ns ? &ts : NULL, NULL,
            FUTEX_BITSET_MATCH_ANY);
    int status = ms_channel_lock(ch);
    if (status == MS_OK) ch->jobs_sleepers--;
    return status;
}

/* Worker side: blocks until at least one job is queued, then, when max_delay_ns > 0, keeps waiting until
 * the queued jobs add up to `max_items` instances or until max_delay_ns after the oldest job was queued,
 * whichever comes first. Then moves jobs to `out` (at most `out_capacity`), oldest first, up to `max_items`
 * instances in all (0: no limit); a job larger than that is taken alone. *count is the number taken.
 * Returns MS_OK; MS_ECLOSED once the channel is closed and no job is left; MS_EBROKEN. Call it without the
 * GIL: it may block for as long as no job comes. */
int ms_pop_batch(void *base, uint64_t max_items, int64_t max_delay_ns, ms_entry *out, size_t out_capacity,
                 size_t *count) {
    ms_channel *ch = base;
    *count = 0;
    if (out_capacity == 0) return MS_EINVAL;
    int status = ms_channel_lock(base);
    if (status != MS_OK) return status;
    while (ch->jobs.head == ch->jobs.tail) {
        if (ch->closed) {
            ms_channel_unlock(base);
            return MS_ECLOSED;
        }
        if ((status = wait_jobs(ch, 0)) != MS_OK) return status;
    }
    if (max_delay_ns > 0) {
        uint64_t oldest = entries(ch, &ch->jobs)[ch->jobs.head % ch->jobs.capacity].enqueued_ns;
        uint64_t deadline = oldest + (uint64_t)max_delay_ns;
        while (!ch->closed && (max_items == 0 || ch->jobs.weight < max_items) &&
               ch->jobs.tail - ch->jobs.head < out_capacity && now_ns() < deadline) {
            if ((status = wait_jobs(ch, deadline)) != MS_OK) return status;
        }
    }
    *count = queue_take(ch, &ch->jobs, max_items, out, out_capacity);
    ms_channel_unlock(base);
    return MS_OK;
}

/* Master side, after the worker died: moves the jobs it never took to `out` (at most `out_capacity`), so that
 * they can run elsewhere. Returns MS_OK or MS_EBROKEN (then nothing can be trusted: fail them all). */
int ms_take_jobs(void *base, ms_entry *out, size_t out_capacity, size_t *count) {
    ms_channel *ch = base;
    *count = 0;
    int status = ms_channel_lock(base);
    if (status != MS_OK) return status;
    *count = queue_take(ch, &ch->jobs, 0, out, out_capacity);
    ms_channel_unlock(base);
    return MS_OK;
}

/* Worker side: queues a completion and then adds 1 to the master's eventfd `event_fd` (-1: none), so that
 * the master's event loop wakes. Returns MS_OK, MS_EFULL, MS_EBROKEN, or MS_ESYS when the eventfd write
 * fails (the completion is queued all the same). */
int ms_push_done(void *base, const ms_entry *done, int event_fd) {
    ms_channel *ch = base;
    int status = ms_channel_lock(base);
    if (status != MS_OK) return status;
    status = queue_push(ch, &ch->done, done);
    ms_channel_unlock(base);
    if (status != MS_OK || event_fd < 0) return status;
    uint64_t one = 1;
    ssize_t n;
    do {
        n = write(event_fd, &one, sizeof(one));
    } while (n < 0 && errno == EINTR);
    return n == (ssize_t)sizeof(one) || errno == EAGAIN ? MS_OK : MS_ESYS; /* EAGAIN: a wake-up is pending */
}

/* Master side: moves every queued completion (at most `out_capacity`) to `out`; never blocks.
 * Returns MS_OK or MS_EBROKEN. */
int ms_pop_done(void *base, ms_entry *out, size_t out_capacity, size_t *count) {
    ms_channel *ch = base;
    *count = 0;
    int status = ms_channel_lock(base);
    if (status != MS_OK) return status;
    *count = queue_take(ch, &ch->done, 0, out, out_capacity);
    ms_channel_unlock(base);
    return MS_OK;
}

static ms_arena *arena_of(const void *base, int which) {
    ms_channel *ch = (ms_channel *)base;
    return which == MS_REQUESTS ? &ch->requests : which == MS_REPLIES ? &ch->replies : NULL;
}

/* Reserves a block of `size` bytes in arena `which` (MS_REQUESTS by the master, MS_REPLIES by the worker:
 * each arena has one producer). Returns what ms_arena_alloc returns, or MS_EINVAL for an unknown arena. */
int ms_alloc(void *base, int which, uint64_t size, uint64_t *data_offset) {
    ms_arena *arena = arena_of(base, which);
    return arena ? ms_arena_alloc(arena, base, size, data_offset) : MS_EINVAL;
}

/* Releases the block whose data is at `data_offset` in arena `which`; any process may. */
int ms_release(void *base, int which, uint64_t data_offset) {
    ms_arena *arena = arena_of(base, which);
    return arena ? ms_arena_release(arena, base, data_offset) : MS_EINVAL;
}

/* 1 when [data_offset, data_offset + size) lies inside arena `which`, else 0: check every offset and size
 * read from an entry before touching the bytes. */
int ms_contains(const void *base, int which, uint64_t data_offset, uint64_t size) {
    ms_arena *arena = arena_of(base, which);
    return arena ? ms_arena_contains(arena, data_offset, size) : 0;
}

/* The largest message arena `which` can hold. */
uint64_t ms_max_alloc(const void *base, int which) {
    ms_arena *arena = arena_of(base, which);
    return arena ? ms_arena_max_alloc(arena) : 0;
}
