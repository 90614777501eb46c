/* segment.c - see segment.h: nameless, owner-only, fully reserved shared memory. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ms_status.h"
#include "segment.h"

/* Creates a segment of `size` bytes under `name` ("/" then random characters, chosen by the caller; the
 * creation fails rather than open an existing one), reserves every page and unlinks the name.
 * On MS_OK, *fd is the caller's descriptor (close-on-exec). Returns MS_ESYS with errno set when a step
 * fails (ENOSPC: /dev/shm cannot hold `size` bytes), leaving nothing behind. */
int ms_segment_create(const char *name, uint64_t size, int *fd) {
    int f = shm_open(name, O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, S_IRUSR | S_IWUSR);
    if (f < 0) return MS_ESYS;
    int err = fchmod(f, S_IRUSR | S_IWUSR) ? errno : 0; /* exact mode, whatever the umask */
    if (!err) err = posix_fallocate(f, 0, (off_t)size);
    shm_unlink(name);
    if (err) {
        close(f);
        errno = err;
        return MS_ESYS;
    }
    *fd = f;
    return MS_OK;
}

/* Stores the size of the segment behind `fd` in *size. Returns MS_OK or MS_ESYS (errno set). */
int ms_segment_size(int fd, uint64_t *size) {
    struct stat st;
    if (fstat(fd, &st) != 0) return MS_ESYS;
    *size = (uint64_t)st.st_size;
    return MS_OK;
}

/* Maps `size` bytes of the segment behind `fd`, readable and writable, shared. Returns the address, or NULL
 * with errno set. The mapping outlives `fd`; end it with ms_segment_unmap. */
void *ms_segment_map(int fd, uint64_t size) {
    void *base = mmap(NULL, (size_t)size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    return base == MAP_FAILED ? NULL : base;
}

/* Ends a mapping made by ms_segment_map. No pointer into it may be used afterwards. Returns MS_OK or MS_ESYS. */
int ms_segment_unmap(void *base, uint64_t size) {
    return munmap(base, (size_t)size) == 0 ? MS_OK : MS_ESYS;
}
