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
 * Trust: the worker runs user code, so the master treats everything in the segment as hostile input that may
 * change at any moment. It takes the layout (where each queue and arena lies) once, from its own arithmetic
 * in ms_channel_init, into a process-local ms_view; the worker copies it once, after checking it, in
 * ms_channel_attach. Queue heads and tails are shared by nature: each call reads them once, checks them
 * against the trusted capacity and indexes entries modulo it, so garbage there is MS_ECORRUPT, never an
 * access outside the entry array. Arena heads and tails are process-local (arena.h).
 * The lock is shared too, and holds no pointer: one 32-bit futex word naming its owner by pid (below), so
 * whatever the worker writes there can only make a lock call wait (the master's for at most
 * MS_MASTER_LOCK_WAIT_NS) or find the channel broken, never steer a memory access.
 *
 * The lock: `lock` is 0 when free, else LOCK_WAITERS (bit 31, "someone may sleep on the word") | the owner's
 * pid (bits 0-29; Linux pids stay below 2^22). Taking it is one CAS 0 -> pid; releasing it one exchange to 0,
 * plus a FUTEX_WAKE only when LOCK_WAITERS was set. A waiter sets LOCK_WAITERS and sleeps on the word (a
 * shared futex) in slices of 10 ms; every slice it checks that the owner is still running (through a pidfd,
 * which tells an exit before the parent reaps the zombie; kill(pid, 0) where pidfds are missing). An owner
 * that exited holding the lock, or a word that names no process at all, makes the channel "broken". The
 * master's calls (push_job, take_jobs, pop_done, close, set_backlog) wait at most MS_MASTER_LOCK_WAIT_NS for
 * a live owner, then mark the channel broken and return MS_ETIMEDOUT: a worker that keeps the lock gets
 * killed like one that died with it. The worker's calls wait without bound (the master is trusted). Both
 * processes must share a pid namespace. Residual risks, all logical, none a memory access: a pid reused
 * within one wait makes a dead owner look alive (the master's wait still ends at its bound); a worker writing
 * a live pid (its own, the master's) into a free lock makes the master wait out its bound; and a worker may
 * write its pid into the lock the master holds (a "steal"): ms_channel_unlock then finds a stranger's pid in
 * the word it releases and marks the channel broken.
 *
 * A broken channel stays broken: every later call returns MS_EBROKEN instead of blocking (the flag is checked
 * before and after taking the lock), and the master drops the channel. (A worker can clear the flag; that
 * only costs the master one more bounded wait before the worker is killed.)
 * ms_pop_batch sleeps on a futex (jobs_seq), not on a process-shared condition variable: glibc keeps waiter
 * counts inside a condition variable, so a process killed while waiting on one could make a later signal
 * block for ever, with the lock held. A futex keeps its waiters in the kernel, which forgets a dead one. */
#ifndef MINDSERVE_CHANNEL_H
#define MINDSERVE_CHANNEL_H

#include <stddef.h>
#include <stdint.h>

#include "arena.h"

/* One queued job (master -> worker) or completion (worker -> master). Its fields are data, never trusted:
 * check offset and size with ms_contains before touching the bytes they name. */
typedef struct {
    uint64_t id;          /* the master's job id, echoed in the completion */
    uint64_t offset;      /* segment offset of the message block's data */
    uint64_t size;        /* bytes of the message */
    uint64_t weight;      /* instances in the job (jobs only): what ms_pop_batch counts */
    uint64_t enqueued_ns; /* CLOCK_MONOTONIC time of the push (jobs only): the batch deadline starts here */
} ms_entry;

/* Where a part of the segment lies: what the header tells at attach, what an ms_view keeps. */
typedef struct {
    uint64_t offset;   /* segment offset */
    uint64_t capacity; /* entries (a queue) or bytes (an arena) */
} ms_region;

/* A ring of entries in the header. `entries` is layout (read only at attach); head, tail and weight are moved
 * by both processes under the channel lock, and each call reads them once and checks them against the
 * trusted capacity. */
typedef struct {
    ms_region entries; /* the entry array */
    uint64_t head;     /* entries ever taken */
    uint64_t tail;     /* entries ever added */
    uint64_t weight;   /* sum of the weights of the queued entries */
} ms_queue;

/* The shared header at the start of the segment. */
typedef struct {
    uint64_t magic;
    uint64_t size; /* bytes in the segment */
    uint32_t closed;
    uint32_t broken; /* sticky: set once a lock owner died or overstayed (written with atomics, lock or not) */
    uint32_t backlog; /* set by the master while jobs wait for room: a batch then stops waiting for more */
    uint32_t jobs_sleepers; /* processes in wait_jobs (under the lock): a push with none makes no syscall */
    _Atomic uint32_t jobs_seq; /* futex word: bumped and woken by every push, close, backlog and breakage */
    uint32_t lock; /* the channel lock (see "The lock" above), only ever accessed with atomics */
    ms_queue jobs;
    ms_queue done;
    ms_region requests; /* master allocates, master releases */
    ms_region replies;  /* worker allocates, master releases */
} ms_channel;

/* One process's handle on a mapped channel, in its own memory (the caller allocates it; ms_channel_init or
 * ms_channel_attach fills it). Every address the calls below compute comes from here, never from the
 * header, so nothing the other process writes into the segment can move them. The arenas' head and tail are
 * this process's producer state (see arena.h). */
typedef struct {
    unsigned char *base; /* where this process mapped the segment */
    uint64_t size;       /* bytes mapped */
    uint32_t pid;        /* getpid() of the process that made the view: what it writes into the lock word */
    ms_region jobs;      /* entry arrays of the two queues */
    ms_region done;
    ms_arena requests;
    ms_arena replies;
} ms_view;

enum { MS_REQUESTS = 0, MS_REPLIES = 1 };

/* How long the master's calls wait for a lock that a live worker holds before giving up (MS_ETIMEDOUT). An
 * honest worker holds the lock for a few hundred nanoseconds of queue bookkeeping; 1 s covers it being
 * descheduled or CPU-throttled meanwhile, and bounds how long a hostile worker can stall the master's loop. */
#define MS_MASTER_LOCK_WAIT_NS 1000000000

size_t ms_channel_min_size(uint64_t queue_capacity);
int ms_channel_init(ms_view *view, void *base, uint64_t size, uint64_t queue_capacity);
int ms_channel_attach(ms_view *view, void *base, uint64_t size);
int ms_channel_close(const ms_view *view);
int ms_channel_set_backlog(const ms_view *view, int backlog);
int ms_channel_lock(const ms_view *view, int64_t timeout_ns);
void ms_channel_unlock(const ms_view *view);

int ms_push_job(const ms_view *view, const ms_entry *job);
int ms_pop_batch(const ms_view *view, uint64_t max_items, int64_t max_delay_ns, ms_entry *out,
                 size_t out_capacity, size_t *count);
int ms_take_jobs(const ms_view *view, ms_entry *out, size_t out_capacity, size_t *count);
int ms_push_done(const ms_view *view, const ms_entry *done, int event_fd);
int ms_pop_done(const ms_view *view, ms_entry *out, size_t out_capacity, size_t *count);

int ms_alloc(ms_view *view, int which, uint64_t size, uint64_t *data_offset);
int ms_release(const ms_view *view, int which, uint64_t data_offset);
int ms_contains(const ms_view *view, int which, uint64_t data_offset, uint64_t size);
uint64_t ms_max_alloc(const ms_view *view, int which);

#endif
