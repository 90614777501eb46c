/* segment.h - creating and mapping the shared-memory segment of a channel.
 *
 * The master creates a segment under a random name with mode 0600, reserves its pages (so that a full
 * /dev/shm is an error at start, not a SIGBUS later) and unlinks the name at once: from then on the segment
 * is reachable only through the file descriptor, which the master passes to its worker. Nothing is ever left
 * in /dev/shm, whatever way the processes end. */
#ifndef MINDSERVE_SEGMENT_H
#define MINDSERVE_SEGMENT_H

#include <stdint.h>

int ms_segment_create(const char *name, uint64_t size, int *fd);
int ms_segment_size(int fd, uint64_t *size);
void *ms_segment_map(int fd, uint64_t size);
int ms_segment_unmap(void *base, uint64_t size);

#endif
