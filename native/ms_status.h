/* ms_status.h - the return codes of the native core (0 is success; errors are negative). */
#ifndef MINDSERVE_MS_STATUS_H
#define MINDSERVE_MS_STATUS_H

#define MS_OK 0
#define MS_EINVAL (-1)   /* an argument, offset or size is out of range */
#define MS_EFULL (-2)    /* no room now: retry once something is released or consumed */
#define MS_ETOOBIG (-3)  /* can never fit, however much is released */
#define MS_ECLOSED (-4)  /* the channel was closed and nothing is left to take */
#define MS_EBROKEN (-5)  /* the other process died holding the channel lock (or did before, or overstayed a
                          * bound): the channel must be dropped */
#define MS_ESYS (-6)     /* a system call failed; errno tells why */
#define MS_ECORRUPT (-7) /* shared memory does not hold what it should */
#define MS_ETIMEDOUT (-8) /* a live process kept the channel lock past the master's bound: the channel is now
                           * broken, and the worker must be ended */

#endif
