/* channel.c - see channel.h for the layout, who writes what, and what each side trusts. */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "channel.h"
#include "ms_status.h"

#define MS_CHANNEL_MAGIC 0x6d696e6473727634ull /* "mindsrv4": the layout version is part of it */
#define MS_MAX_QUEUE (1u << 20)                /* entries per queue */

#define LOCK_WAITERS (1u << 31)          /* lock word: someone may sleep on it (unlock must wake) */
#define LOCK_PID_MASK ((1u << 30) - 1)   /* lock word: the owner's pid; bit 30 is always 0 */
#define LOCK_SLICE_NS 10000000ll         /* a waiter checks the owner's life this often */
#define LOCK_FOREVER (-1ll)              /* the worker's calls: no bound on the wait */

static uint64_t align_up(uint64_t n) { return (n + MS_ALIGN - 1) & ~(uint64_t)(MS_ALIGN - 1); }

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static ms_channel *header(const ms_view *view) { return (ms_channel *)view->base; }

/* A shared word the other process may rewrite at any moment: read or written exactly once where the code
 * says so (the compiler may neither re-read nor tear it). Relaxed: between honest processes the channel lock
 * orders these accesses. */
static uint64_t load_u64(const uint64_t *word) { return __atomic_load_n(word, __ATOMIC_RELAXED); }
static void store_u64(uint64_t *word, uint64_t value) { __atomic_store_n(word, value, __ATOMIC_RELAXED); }
static uint32_t load_u32(const uint32_t *word) { return __atomic_load_n(word, __ATOMIC_RELAXED); }
static void store_u32(uint32_t *word, uint32_t value) { __atomic_store_n(word, value, __ATOMIC_RELAXED); }

/* The entry at ring index `index` of the queue whose trusted entry array is `r`. The index is taken modulo
 * the trusted capacity, so the entry lies inside the array whatever the index. */
static ms_entry *entry_at(const ms_view *view, const ms_region *r, uint64_t index) {
    return (ms_entry *)(view->base + r->offset) + index % r->capacity;
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

/* Fills `view` with the layout of a channel of `size` bytes at `base`: the header, `queue_capacity`
 * entries per queue, the rest split evenly between the two arenas (empty). The caller checked the sizes. */
static void lay_out(ms_view *view, void *base, uint64_t size, uint64_t queue_capacity) {
    uint64_t queue_bytes = align_up(queue_capacity * sizeof(ms_entry));
    uint64_t pos = align_up(sizeof(ms_channel));
    view->base = base;
    view->size = size;
    view->pid = (uint32_t)getpid();
    view->jobs = (ms_region){pos, queue_capacity};
    view->done = (ms_region){pos + queue_bytes, queue_capacity};
    pos += 2 * queue_bytes;
    uint64_t arena_size = ((size - pos) / 2) & ~(uint64_t)(MS_ALIGN - 1);
    ms_arena_init(&view->requests, pos, arena_size);
    ms_arena_init(&view->replies, pos + arena_size, arena_size);
}

/* Master side: lays out a fresh channel over the `size` bytes at `base` (zero-filled, as a new segment is),
 * with `queue_capacity` entries per queue and the rest split evenly between the two arenas, and fills the
 * caller's `view` with that layout: the master's copy, taken from its own arithmetic, never from the header.
 * The lock starts free (0, as the zero-filled header has it). Returns MS_OK, or MS_EINVAL when the segment is
 * too small or the capacity is 0 or absurd (nothing is written, `view` included). */
int ms_channel_init(ms_view *view, void *base, uint64_t size, uint64_t queue_capacity) {
    if (queue_capacity == 0 || queue_capacity > MS_MAX_QUEUE || size < ms_channel_min_size(queue_capacity))
        return MS_EINVAL;
    ms_view local;
    lay_out(&local, base, size, queue_capacity);
    ms_channel *ch = base;
    memset(ch, 0, sizeof(*ch));
    ch->size = size;
    ch->jobs.entries = local.jobs;
    ch->done.entries = local.done;
    ch->requests = (ms_region){local.requests.offset, local.requests.capacity};
    ch->replies = (ms_region){local.replies.offset, local.replies.capacity};
    ch->magic = MS_CHANNEL_MAGIC; /* last: a half-made channel never passes ms_channel_attach */
    *view = local;
    return MS_OK;
}

/* Whether a queue's entry array lies inside a segment of `size` bytes, aligned, after the header. */
static int queue_fits(const ms_region *r, uint64_t size) {
    uint64_t bytes;
    if (r->capacity == 0 || __builtin_mul_overflow(r->capacity, sizeof(ms_entry), &bytes)) return 0;
    return r->offset % MS_ALIGN == 0 && r->offset >= sizeof(ms_channel) && r->offset <= size &&
           bytes <= size - r->offset;
}

/* Whether an arena's region lies inside a segment of `size` bytes, aligned, with room for two headers. */
static int arena_fits(const ms_arena *a, uint64_t size) {
    return a->offset % MS_ALIGN == 0 && a->capacity % MS_ALIGN == 0 && a->capacity >= 2 * MS_ALIGN &&
           a->offset <= size && a->capacity <= size - a->offset;
}

/* Worker side, after mapping the `size` bytes at `base` it was handed: copies the layout from the header
 * into the caller's `view` (each field read once), then checks that copy: the magic, the size, and every part
 * inside the segment. From then on only `view` is used, so no later change to the header moves an address.
 * The arenas start empty in `view`: attach before producing into an arena, and only once per producer.
 * Returns MS_OK, or MS_ECORRUPT with `view` untouched. */
int ms_channel_attach(ms_view *view, void *base, uint64_t size) {
    if (size < sizeof(ms_channel)) return MS_ECORRUPT;
    ms_channel *ch = base;
    ms_view local = {.base = base, .size = size, .pid = (uint32_t)getpid()};
    uint64_t magic = load_u64(&ch->magic), claimed_size = load_u64(&ch->size);
    local.jobs = (ms_region){load_u64(&ch->jobs.entries.offset), load_u64(&ch->jobs.entries.capacity)};
    local.done = (ms_region){load_u64(&ch->done.entries.offset), load_u64(&ch->done.entries.capacity)};
    ms_arena_init(&local.requests, load_u64(&ch->requests.offset), load_u64(&ch->requests.capacity));
    ms_arena_init(&local.replies, load_u64(&ch->replies.offset), load_u64(&ch->replies.capacity));
    if (magic != MS_CHANNEL_MAGIC || claimed_size != size) return MS_ECORRUPT;
    if (!queue_fits(&local.jobs, size) || !queue_fits(&local.done, size)) return MS_ECORRUPT;
    if (!arena_fits(&local.requests, size) || !arena_fits(&local.replies, size)) return MS_ECORRUPT;
    *view = local;
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

/* ---- the channel lock: a futex word naming its owner by pid (channel.h, "The lock") ---- */

/* Marks the channel broken for good and wakes every process sleeping in wait_jobs or waiting for the lock,
 * so that each finds out. Every access is atomic: callable with the lock or without it (after a timed-out
 * wait). */
static void break_channel(ms_channel *ch) {
    store_u32(&ch->broken, 1);
    atomic_fetch_add_explicit(&ch->jobs_seq, 1, memory_order_release);
    wake_sleepers(ch, INT_MAX); /* the dead owner may have been counted as a sleeper: wake regardless */
    syscall(SYS_futex, &ch->lock, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

/* One compare-and-swap of the lock word from `from` to `to`; acquire on success. Returns 1 on success. */
static int lock_cas(ms_channel *ch, uint32_t from, uint32_t to) {
    return __atomic_compare_exchange_n(&ch->lock, &from, to, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED);
}

/* Whether lock word `v` (not 0) is one an honest process writes: a pid and maybe LOCK_WAITERS, nothing else. */
static int lock_word_sound(uint32_t v) {
    return (v & LOCK_PID_MASK) != 0 && (v & ~(LOCK_PID_MASK | LOCK_WAITERS)) == 0;
}

/* Whether process `pid` (> 0) has not exited. A pidfd sees the exit itself, before the parent reaps the
 * zombie (kill(pid, 0) would call a zombie alive); kill is the fallback where pidfd_open is missing or out
 * of descriptors. EINVAL from pidfd_open (a thread id, not a process) counts as no process. When in doubt
 * (poll failing), running: the next check decides. The pidfd is opened and closed here. */
static int process_running(uint32_t pid) {
    int fd = (int)syscall(SYS_pidfd_open, (pid_t)pid, 0);
    if (fd >= 0) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int ready = poll(&p, 1, 0); /* readable once the process has exited */
        close(fd);
        return ready != 1;
    }
    if (errno == ESRCH || errno == EINVAL) return 0;
    return !(kill((pid_t)pid, 0) == -1 && errno == ESRCH);
}

/* The lock word held `v`, whose owner is gone (exited) or which names no process. Takes the lock from it,
 * if it still holds `v`, by one CAS, marks the channel broken (the owner may have left the queues
 * half-updated) and releases the lock. Returns 1 when it did, 0 when the word had changed (the owner let go
 * in the meantime, or another waiter was first): the caller looks again. */
static int take_from_dead(const ms_view *view, uint32_t v) {
    ms_channel *ch = header(view);
    if (!lock_cas(ch, v, view->pid | LOCK_WAITERS)) return 0;
    break_channel(ch);
    ms_channel_unlock(view);
    return 1;
}

/* Sleeps on lock word `v` (owned, sound) for at most `timeout_ns`, after setting LOCK_WAITERS in it so that
 * the owner's unlock wakes the sleepers. Returns at once when the word no longer holds `v`; the caller looks
 * again whatever woke it (unlock, timeout, signal, a spurious wake-up). */
static void wait_on_lock(ms_channel *ch, uint32_t v, int64_t timeout_ns) {
    if (!(v & LOCK_WAITERS)) {
        if (!lock_cas(ch, v, v | LOCK_WAITERS)) return;
        v |= LOCK_WAITERS;
    }
    struct timespec ts = {(time_t)(timeout_ns / 1000000000), (long)(timeout_ns % 1000000000)};
    syscall(SYS_futex, &ch->lock, FUTEX_WAIT, v, &ts, NULL, 0); /* shared: no FUTEX_PRIVATE_FLAG */
}

/* The slow path of lock_within: the word was not free. Loops: takes the word when free (with LOCK_WAITERS,
 * as other waiters may sleep); gives up when the channel was broken meanwhile; breaks the channel when the
 * word is garbage or, checked once a slice, its owner has exited; gives up after `bound_ns` (LOCK_FOREVER:
 * never); else sleeps a slice at most. A hostile
 * worker flipping the word makes the futex wait return at once: the loop then spins, until its bound.
 * Returns MS_OK with the lock held, MS_EBROKEN or MS_ETIMEDOUT (the channel broken) without it. */
static int lock_slow(const ms_view *view, int64_t bound_ns) {
    ms_channel *ch = header(view);
    uint64_t start = now_ns(), checked = start;
    for (;;) {
        if (load_u32(&ch->broken)) return MS_EBROKEN;
        uint32_t v = __atomic_load_n(&ch->lock, __ATOMIC_RELAXED);
        if (v == 0) {
            if (lock_cas(ch, 0, view->pid | LOCK_WAITERS)) return MS_OK;
            continue;
        }
        uint64_t now = now_ns();
        int check = now - checked >= (uint64_t)LOCK_SLICE_NS;
        if (check) checked = now;
        if (!lock_word_sound(v) || (check && !process_running(v & LOCK_PID_MASK))) {
            if (take_from_dead(view, v)) return MS_EBROKEN;
            continue;
        }
        int64_t left = bound_ns == LOCK_FOREVER ? LOCK_SLICE_NS : bound_ns - (int64_t)(now - start);
        if (left <= 0) {
            break_channel(ch);
            return MS_ETIMEDOUT;
        }
        wait_on_lock(ch, v, left < LOCK_SLICE_NS ? left : LOCK_SLICE_NS);
    }
}

/* Takes the channel lock, waiting at most `bound_ns` for it (LOCK_FOREVER: without bound). Fast path: one
 * CAS of the free word to this process's pid. Returns MS_OK with the lock held; without it, MS_EBROKEN when
 * the channel is broken (now or before: a lock owner died, or overstayed a bound), or MS_ETIMEDOUT when a
 * live process kept the lock past the bound (the channel is broken from then on). */
static int lock_within(const ms_view *view, int64_t bound_ns) {
    ms_channel *ch = header(view);
    if (load_u32(&ch->broken)) return MS_EBROKEN; /* no wait for a lock that may never come free */
    if (!lock_cas(ch, 0, view->pid)) {
        int status = lock_slow(view, bound_ns);
        if (status != MS_OK) return status;
    }
    if (load_u32(&ch->broken)) {
        ms_channel_unlock(view);
        return MS_EBROKEN;
    }
    return MS_OK;
}

/* Takes the channel lock for a caller outside this file (tests, tools): as lock_within, with `timeout_ns` < 0
 * waiting without bound. Release it with ms_channel_unlock. */
int ms_channel_lock(const ms_view *view, int64_t timeout_ns) {
    return lock_within(view, timeout_ns < 0 ? LOCK_FOREVER : timeout_ns);
}

/* Releases the channel lock (held by the caller): one exchange of the word to 0, and a FUTEX_WAKE of one
 * sleeper when LOCK_WAITERS was set. A word that no longer names this process means another process wrote
 * into it while we held the lock (only a hostile one does): the channel is marked broken. */
void ms_channel_unlock(const ms_view *view) {
    ms_channel *ch = header(view);
    uint32_t old = __atomic_exchange_n(&ch->lock, 0, __ATOMIC_RELEASE);
    if ((old & ~LOCK_WAITERS) != view->pid) break_channel(ch);
    if (old & LOCK_WAITERS) syscall(SYS_futex, &ch->lock, FUTEX_WAKE, 1, NULL, NULL, 0);
}

/* Reads the head and tail of queue `q` once each (lock held): *head, and *len = entries queued. Returns
 * MS_OK, or MS_ECORRUPT when they claim more entries than the trusted entry array `r` holds. */
static int queue_read(const ms_queue *q, const ms_region *r, uint64_t *head, uint64_t *len) {
    *head = load_u64(&q->head);
    *len = load_u64(&q->tail) - *head;
    return *len <= r->capacity ? MS_OK : MS_ECORRUPT;
}

/* Appends `e` to queue `q` with entry array `r` (lock held). Returns MS_OK, MS_EFULL, or MS_ECORRUPT
 * (nothing written). */
static int queue_push(const ms_view *view, ms_queue *q, const ms_region *r, const ms_entry *e) {
    uint64_t head, len;
    int status = queue_read(q, r, &head, &len);
    if (status != MS_OK) return status;
    if (len == r->capacity) return MS_EFULL;
    *entry_at(view, r, head + len) = *e;
    store_u64(&q->tail, head + len + 1);
    store_u64(&q->weight, load_u64(&q->weight) + e->weight);
    return MS_OK;
}

/* Whether an entry of weight `w` still fits a batch of weight `taken` under `max_weight` (0: no limit). */
static int weight_fits(uint64_t taken, uint64_t w, uint64_t max_weight) {
    return max_weight == 0 || (taken <= max_weight && w <= max_weight - taken);
}

/* Moves up to `cap` entries from the front of queue `q` (entry array `r`) to `out` (lock held), stopping
 * before the entry that would take the total weight past `max_weight` (0: no limit); the first entry is
 * always taken. *n is the number moved. Returns MS_OK, or MS_ECORRUPT (nothing moved): at most the trusted
 * capacity is ever read, whatever the shared head and tail say. */
static int queue_take(const ms_view *view, ms_queue *q, const ms_region *r, uint64_t max_weight, ms_entry *out,
                      size_t cap, size_t *n) {
    uint64_t head, len, taken = 0;
    size_t i = 0;
    *n = 0;
    int status = queue_read(q, r, &head, &len);
    if (status != MS_OK) return status;
    for (; i < cap && i < len; i++) {
        out[i] = *entry_at(view, r, head + i); /* copied once: the weight checked is the weight returned */
        if (i > 0 && !weight_fits(taken, out[i].weight, max_weight)) break;
        taken += out[i].weight;
    }
    store_u64(&q->head, head + i);
    store_u64(&q->weight, load_u64(&q->weight) - taken);
    *n = i;
    return MS_OK;
}

/* Master side: marks the channel closed and wakes the worker; ms_pop_batch then returns MS_ECLOSED once the
 * jobs already queued are taken. Returns MS_OK, MS_EBROKEN or MS_ETIMEDOUT. */
int ms_channel_close(const ms_view *view) {
    ms_channel *ch = header(view);
    int status = lock_within(view, MS_MASTER_LOCK_WAIT_NS);
    if (status != MS_OK) return status;
    ch->closed = 1;
    bump_jobs(ch);
    ms_channel_unlock(view);
    wake_sleepers(ch, INT_MAX);
    return MS_OK;
}

/* Master side: tells the worker whether jobs wait in the master for room in the channel (`backlog` != 0).
 * While they do, ms_pop_batch stops waiting for a fuller batch, which could not come before the worker frees
 * room. Wakes a worker waiting for one. Returns MS_OK, MS_EBROKEN or MS_ETIMEDOUT. */
int ms_channel_set_backlog(const ms_view *view, int backlog) {
    ms_channel *ch = header(view);
    int status = lock_within(view, MS_MASTER_LOCK_WAIT_NS);
    if (status != MS_OK) return status;
    ch->backlog = backlog != 0;
    int sleepers = bump_jobs(ch);
    ms_channel_unlock(view);
    if (sleepers) wake_sleepers(ch, INT_MAX);
    return MS_OK;
}

/* Master side: queues a job (its enqueued_ns is stamped here) and wakes the worker.
 * Returns MS_OK, MS_EFULL when the queue holds `capacity` jobs, MS_ECLOSED, MS_EBROKEN, MS_ETIMEDOUT, or
 * MS_ECORRUPT. */
int ms_push_job(const ms_view *view, const ms_entry *job) {
    ms_channel *ch = header(view);
    int status = lock_within(view, MS_MASTER_LOCK_WAIT_NS);
    if (status != MS_OK) return status;
    ms_entry e = *job;
    e.enqueued_ns = now_ns();
    status = ch->closed ? MS_ECLOSED : queue_push(view, &ch->jobs, &view->jobs, &e);
    int sleepers = status == MS_OK && bump_jobs(ch);
    ms_channel_unlock(view);
    if (sleepers) wake_sleepers(ch, 1);
    return status;
}

/* Sleeps until a push, close, backlog change or breakage wakes it, until `deadline_ns` (CLOCK_MONOTONIC), or
 * without end for 0; call it with the lock held. The lock is released while sleeping; jobs_seq is read and
 * the sleeper counted under it, so a push made between the unlock and the sleep makes the futex wait return
 * at once. Returns MS_OK with the lock held (woken, timed out or interrupted: the caller checks its condition
 * again), or MS_EBROKEN with the lock released. */
static int wait_jobs(const ms_view *view, uint64_t deadline_ns) {
    ms_channel *ch = header(view);
    uint32_t seq = atomic_load_explicit(&ch->jobs_seq, memory_order_relaxed);
    struct timespec ts = {(time_t)(deadline_ns / 1000000000ull), (long)(deadline_ns % 1000000000ull)};
    ch->jobs_sleepers++;
    ms_channel_unlock(view);
    /* FUTEX_WAIT_BITSET takes an absolute CLOCK_MONOTONIC deadline; NULL waits without end */
    syscall(SYS_futex, (uint32_t *)&ch->jobs_seq, FUTEX_WAIT_BITSET, seq, deadline_ns ? &ts : NULL, NULL,
            FUTEX_BITSET_MATCH_ANY);
    int status = lock_within(view, LOCK_FOREVER);
    if (status == MS_OK) ch->jobs_sleepers--;
    return status;
}

/* Lock held: sleeps until at least one job is queued. Returns MS_OK (a job is queued), MS_ECLOSED (closed
 * and empty) or MS_ECORRUPT, each with the lock held; or MS_EBROKEN with the lock released. */
static int wait_first_job(const ms_view *view) {
    ms_channel *ch = header(view);
    uint64_t head, len;
    for (;;) {
        int status = queue_read(&ch->jobs, &view->jobs, &head, &len);
        if (status != MS_OK || len > 0) return status;
        if (ch->closed) return MS_ECLOSED;
        if ((status = wait_jobs(view, 0)) != MS_OK) return status;
    }
}

/* Lock held, a job queued: sleeps until the queued jobs weigh `max_items` (0: no limit) or number
 * `out_capacity`, the channel is closed, the master has a backlog, or `max_delay_ns` have passed since the
 * oldest queued job was pushed; at once for max_delay_ns <= 0. Returns as wait_first_job, but MS_ECLOSED. */
static int wait_more_jobs(const ms_view *view, uint64_t max_items, int64_t max_delay_ns, size_t out_capacity) {
    ms_channel *ch = header(view);
    uint64_t head, len;
    int status = queue_read(&ch->jobs, &view->jobs, &head, &len);
    if (status != MS_OK || max_delay_ns <= 0 || len == 0) return status;
    uint64_t deadline = entry_at(view, &view->jobs, head)->enqueued_ns + (uint64_t)max_delay_ns;
    while (!ch->closed && !ch->backlog && (max_items == 0 || load_u64(&ch->jobs.weight) < max_items) &&
           len < out_capacity && now_ns() < deadline) {
        if ((status = wait_jobs(view, deadline)) != MS_OK) return status;
        if ((status = queue_read(&ch->jobs, &view->jobs, &head, &len)) != MS_OK) return status;
    }
    return MS_OK;
}

/* Worker side: blocks until at least one job is queued, then, when max_delay_ns > 0, keeps waiting until
 * the queued jobs add up to `max_items` instances or until max_delay_ns after the oldest job was queued,
 * whichever comes first; a close, or a backlog in the master, ends the wait at once. Then moves jobs to
 * `out` (at most `out_capacity`), oldest first, up to `max_items` instances in all (0: no limit); a job
 * larger than that is taken alone. *count is the number taken.
 * Returns MS_OK; MS_ECLOSED once the channel is closed and no job is left; MS_EBROKEN; MS_ECORRUPT;
 * MS_EINVAL for out_capacity 0. Call it without the GIL: it may block for as long as no job comes. */
int ms_pop_batch(const ms_view *view, uint64_t max_items, int64_t max_delay_ns, ms_entry *out,
                 size_t out_capacity, size_t *count) {
    ms_channel *ch = header(view);
    *count = 0;
    if (out_capacity == 0) return MS_EINVAL;
    int status = lock_within(view, LOCK_FOREVER);
    if (status != MS_OK) return status;
    status = wait_first_job(view);
    if (status == MS_OK) status = wait_more_jobs(view, max_items, max_delay_ns, out_capacity);
    if (status == MS_EBROKEN) return status; /* the lock is released already */
    if (status == MS_OK) status = queue_take(view, &ch->jobs, &view->jobs, max_items, out, out_capacity, count);
    ms_channel_unlock(view);
    return status;
}

/* Master side, after the worker died: moves the jobs it never took to `out` (at most `out_capacity`), so that
 * they can run elsewhere. Returns MS_OK, or MS_EBROKEN / MS_ETIMEDOUT / MS_ECORRUPT (then nothing can be
 * trusted: fail them all). */
int ms_take_jobs(const ms_view *view, ms_entry *out, size_t out_capacity, size_t *count) {
    ms_channel *ch = header(view);
    *count = 0;
    int status = lock_within(view, MS_MASTER_LOCK_WAIT_NS);
    if (status != MS_OK) return status;
    status = queue_take(view, &ch->jobs, &view->jobs, 0, out, out_capacity, count);
    ms_channel_unlock(view);
    return status;
}

/* Worker side: queues a completion and then adds 1 to the master's eventfd `event_fd` (-1: none), so that
 * the master's event loop wakes. Returns MS_OK, MS_EFULL, MS_EBROKEN, MS_ECORRUPT, or MS_ESYS when the
 * eventfd write fails (the completion is queued all the same). */
int ms_push_done(const ms_view *view, const ms_entry *done, int event_fd) {
    ms_channel *ch = header(view);
    int status = lock_within(view, LOCK_FOREVER);
    if (status != MS_OK) return status;
    status = queue_push(view, &ch->done, &view->done, done);
    ms_channel_unlock(view);
    if (status != MS_OK || event_fd < 0) return status;
    uint64_t one = 1;
    ssize_t n;
    do {
        n = write(event_fd, &one, sizeof(one));
    } while (n < 0 && errno == EINTR);
    return n == (ssize_t)sizeof(one) || errno == EAGAIN ? MS_OK : MS_ESYS; /* EAGAIN: a wake-up is pending */
}

/* Master side: moves every queued completion (at most `out_capacity`) to `out`; never blocks. The entries
 * are the worker's word: check each offset and size with ms_contains. Returns MS_OK, MS_EBROKEN,
 * MS_ETIMEDOUT or MS_ECORRUPT. */
int ms_pop_done(const ms_view *view, ms_entry *out, size_t out_capacity, size_t *count) {
    ms_channel *ch = header(view);
    *count = 0;
    int status = lock_within(view, MS_MASTER_LOCK_WAIT_NS);
    if (status != MS_OK) return status;
    status = queue_take(view, &ch->done, &view->done, 0, out, out_capacity, count);
    ms_channel_unlock(view);
    return status;
}

/* The view's own state of arena `which`, or NULL for an unknown arena. */
static const ms_arena *arena_in(const ms_view *view, int which) {
    return which == MS_REQUESTS ? &view->requests : which == MS_REPLIES ? &view->replies : NULL;
}

/* Reserves a block of `size` bytes in arena `which` (MS_REQUESTS by the master, MS_REPLIES by the worker:
 * each arena has one producer, whose view holds its head and tail). Returns what ms_arena_alloc returns, or
 * MS_EINVAL for an unknown arena. */
int ms_alloc(ms_view *view, int which, uint64_t size, uint64_t *data_offset) {
    ms_arena *arena = (ms_arena *)arena_in(view, which); /* `view` is not const: neither is its arena */
    return arena ? ms_arena_alloc(arena, view->base, size, data_offset) : MS_EINVAL;
}

/* Releases the block whose data is at `data_offset` in arena `which`; any process may. */
int ms_release(const ms_view *view, int which, uint64_t data_offset) {
    const ms_arena *arena = arena_in(view, which);
    return arena ? ms_arena_release(arena, view->base, data_offset) : MS_EINVAL;
}

/* 1 when [data_offset, data_offset + size) lies inside arena `which`, else 0: check every offset and size
 * read from an entry before touching the bytes. Reads only the view. */
int ms_contains(const ms_view *view, int which, uint64_t data_offset, uint64_t size) {
    const ms_arena *arena = arena_in(view, which);
    return arena ? ms_arena_contains(arena, data_offset, size) : 0;
}

/* The largest message arena `which` can hold. */
uint64_t ms_max_alloc(const ms_view *view, int which) {
    const ms_arena *arena = arena_in(view, which);
    return arena ? ms_arena_max_alloc(arena) : 0;
}
