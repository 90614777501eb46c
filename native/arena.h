/* arena.h - a ring allocator for messages inside a shared-memory segment.
 *
 * An arena is a region of `capacity` bytes at `offset` from the segment start. Blocks are carved from it in
 * ring order by one process (the producer); any process may mark a block free (the consumer, once it is done
 * with it). The producer reclaims freed space lazily, oldest block first, so a block freed out of order is
 * reused once the blocks before it are freed too. While the live blocks fit in the first few megabytes the
 * ring wraps there, early, so that messages reuse memory still in the CPU caches. Each block starts with a 64-byte header; the data after it
 * is 64-byte aligned. Offsets handed out and taken back are segment offsets of the data, never pointers, so
 * both processes may map the segment at different addresses.
 *
 * Trust: an ms_arena lives in the memory of the process that uses it, never in the segment. Its offset and
 * capacity are the layout that process checked (or made) once; its head and tail are the producer's own ring
 * state, which the other process cannot reach. Only the block headers are shared, and the other process may
 * write anything into them at any time: every header the producer reads is checked before its size moves the
 * tail, so that no garbage can take a position outside the arena or off the 64-byte grid. */
#ifndef MINDSERVE_ARENA_H
#define MINDSERVE_ARENA_H

#include <stdatomic.h>
#include <stdint.h>

#define MS_ALIGN 64u

/* Process-local: see "Trust" above. */
typedef struct {
    uint64_t offset;   /* segment offset of the region, a multiple of MS_ALIGN */
    uint64_t capacity; /* bytes in the region, a multiple of MS_ALIGN, at least two headers */
    uint64_t head;     /* bytes ever handed out (producer only), a multiple of MS_ALIGN */
    uint64_t tail;     /* bytes ever reclaimed (producer only), head - tail <= capacity */
} ms_arena;

/* The header in front of every block (in shared memory). */
typedef struct {
    uint64_t size;          /* bytes of the block, header included, a multiple of MS_ALIGN */
    uint32_t magic;         /* MS_BLOCK_MAGIC: tells a block header from stray bytes */
    _Atomic uint32_t state; /* MS_BLOCK_USED until released */
    unsigned char pad[MS_ALIGN - 16];
} ms_block;

void ms_arena_init(ms_arena *arena, uint64_t offset, uint64_t capacity);
int ms_arena_alloc(ms_arena *arena, unsigned char *base, uint64_t size, uint64_t *data_offset);
int ms_arena_release(const ms_arena *arena, unsigned char *base, uint64_t data_offset);
int ms_arena_contains(const ms_arena *arena, uint64_t data_offset, uint64_t size);
uint64_t ms_arena_max_alloc(const ms_arena *arena);

#endif
