/* arena.c - see arena.h for the model: a producer-owned ring of blocks, freed by flag. */
#include <string.h>

#include "arena.h"
#include "ms_status.h"

#define MS_BLOCK_MAGIC 0x4d53424bu /* "MSBK" */
#define MS_BLOCK_USED 1u
#define MS_BLOCK_FREE 2u
#define MS_ARENA_WINDOW (4u << 20) /* see ms_arena_alloc: about what one core's caches hold */

_Static_assert(sizeof(ms_block) == MS_ALIGN, "a block header is one alignment unit");

/* Rounds `size` up to a multiple of MS_ALIGN; returns 0 when that would overflow. */
static uint64_t round_up(uint64_t size) {
    if (size > UINT64_MAX - (MS_ALIGN - 1)) return 0;
    return (size + MS_ALIGN - 1) & ~(uint64_t)(MS_ALIGN - 1);
}

/* The header of the block at ring position `pos` (< capacity, a multiple of MS_ALIGN: the whole header then
 * lies inside the arena, which the caller's trusted layout places inside the segment). */
static ms_block *block_at(const ms_arena *arena, unsigned char *base, uint64_t pos) {
    return (ms_block *)(base + arena->offset + pos);
}

/* Sets up an empty arena over [offset, offset + capacity) of the segment. `capacity` must be a multiple of
 * MS_ALIGN and at least two headers; the caller guarantees the region lies inside the segment. */
void ms_arena_init(ms_arena *arena, uint64_t offset, uint64_t capacity) {
    arena->offset = offset;
    arena->capacity = capacity;
    arena->head = 0;
    arena->tail = 0;
}

/* The largest data size one block can ever hold: the whole ring less one header. */
uint64_t ms_arena_max_alloc(const ms_arena *arena) {
    return arena->capacity - MS_ALIGN;
}

/* Whether a header read at ring position `pos` (the tail's) may describe a block of `size` bytes: a whole
 * number of alignment units, inside the live part, and not across the end of the ring (no block wraps). */
static int block_size_ok(const ms_arena *arena, uint64_t pos, uint64_t size) {
    return size >= MS_ALIGN && size % MS_ALIGN == 0 && size <= arena->head - arena->tail &&
           size <= arena->capacity - pos;
}

/* Producer side: moves the tail past every freed block at the front of the ring. Each header is read once
 * (the other process may be rewriting it) and checked before its size is used, so the tail stays aligned and
 * never passes the head. Returns MS_OK, or MS_ECORRUPT when a freed header there is not one this producer
 * wrote; the arena is then left as it was before that block. */
static int reclaim(ms_arena *arena, unsigned char *base) {
    while (arena->tail != arena->head) {
        uint64_t pos = arena->tail % arena->capacity;
        ms_block *blk = block_at(arena, base, pos);
        if (atomic_load_explicit(&blk->state, memory_order_acquire) != MS_BLOCK_FREE) break;
        uint64_t size = __atomic_load_n(&blk->size, __ATOMIC_RELAXED);
        uint32_t magic = __atomic_load_n(&blk->magic, __ATOMIC_RELAXED);
        if (magic != MS_BLOCK_MAGIC || !block_size_ok(arena, pos, size)) return MS_ECORRUPT;
        arena->tail += size;
    }
    if (arena->tail == arena->head) arena->head = arena->tail = 0; /* empty: start again at the front */
    return MS_OK;
}

/* Writes a block header of `size` bytes at the head and advances the head past it. */
static void put_block(ms_arena *arena, unsigned char *base, uint64_t size, uint32_t state) {
    ms_block *blk = block_at(arena, base, arena->head % arena->capacity);
    blk->size = size;
    blk->magic = MS_BLOCK_MAGIC;
    atomic_store_explicit(&blk->state, state, memory_order_release);
    arena->head += size;
}

/* Producer side: reserves a block for `size` data bytes and stores the segment offset of its data in
 * *data_offset. A block never wraps around the end of the ring: when the space left before the end is too
 * short, or the block would reach past the first MS_ARENA_WINDOW bytes while the front has room, that space
 * is skipped (as an already-free block) and the block starts at the front.
 * Returns MS_OK; MS_EFULL when there is no room until older blocks are released; MS_ETOOBIG when `size`
 * exceeds ms_arena_max_alloc; MS_ECORRUPT when the ring's headers were overwritten. */
int ms_arena_alloc(ms_arena *arena, unsigned char *base, uint64_t size, uint64_t *data_offset) {
    int status = reclaim(arena, base);
    if (status != MS_OK) return status;
    if (size > ms_arena_max_alloc(arena)) return MS_ETOOBIG;
    uint64_t need = round_up(size + MS_ALIGN);
    uint64_t used = arena->head - arena->tail;
    uint64_t pos = arena->head % arena->capacity;
    uint64_t to_end = arena->capacity - pos;
    uint64_t skip = need > to_end ? to_end : 0;
    /* Past the window, start again at the front when the live blocks leave room there: the bytes in use then
     * stay few and recent, in the CPU caches, instead of every message going to memory the ring last touched
     * megabytes ago. When the live blocks need more than the window, the ring runs on to its end. */
    if (!skip && pos + need > MS_ARENA_WINDOW && used + to_end + need <= arena->capacity) skip = to_end;
    if (used + skip + need > arena->capacity) return MS_EFULL;
    if (skip) put_block(arena, base, skip, MS_BLOCK_FREE);
    uint64_t start = arena->head % arena->capacity;
    put_block(arena, base, need, MS_BLOCK_USED);
    *data_offset = arena->offset + start + MS_ALIGN;
    return MS_OK;
}

/* Checks that [data_offset, data_offset + size) lies inside the arena's region, without overflow.
 * Returns 1 when it does, 0 otherwise. Reads nothing from shared memory. */
int ms_arena_contains(const ms_arena *arena, uint64_t data_offset, uint64_t size) {
    if (data_offset < arena->offset + MS_ALIGN) return 0;
    uint64_t pos = data_offset - arena->offset;
    return pos <= arena->capacity && size <= arena->capacity - pos;
}

/* Any process: marks the block whose data starts at `data_offset` free. Returns MS_OK, or MS_EINVAL when
 * the offset is not the data of a live block of this arena (outside it, misaligned, or not a used block);
 * nothing is written then. */
int ms_arena_release(const ms_arena *arena, unsigned char *base, uint64_t data_offset) {
    if (!ms_arena_contains(arena, data_offset, 0)) return MS_EINVAL;
    uint64_t pos = data_offset - arena->offset - MS_ALIGN;
    if (pos % MS_ALIGN != 0 || pos + MS_ALIGN > arena->capacity) return MS_EINVAL;
    ms_block *blk = block_at(arena, base, pos);
    uint32_t expected = MS_BLOCK_USED;
    if (blk->magic != MS_BLOCK_MAGIC) return MS_EINVAL;
    if (!atomic_compare_exchange_strong_explicit(&blk->state, &expected, MS_BLOCK_FREE, memory_order_acq_rel,
                                                 memory_order_relaxed))
        return MS_EINVAL;
    return MS_OK;
}
