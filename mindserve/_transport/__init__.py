"""The channel between the master and one worker process.

Tensors cross in shared memory: ``shm_channel`` wraps the native channel (queues and arenas in one segment),
``blocks`` lays out the job and reply messages in it (a JSON header plus raw tensor bytes, never pickled).
``job_flow`` is the master's side of the jobs (splitting, the backlog, checking replies), the worker's is
mindserve._workers.job_io. The control socket beside it (``messages`` framing, ``master_side`` / ``worker_side``
ends) carries the start handshake and tells each side when the other is gone; ``worker_contract`` defines the
worker's command line and the control messages for both sides.
"""
