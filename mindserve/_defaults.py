"""Every default setting of the server, defined once: the public API's arguments, the dispatcher's and the
frontends' bounds and the command line's settings all take them from here. (No imports: the command line reads
its settings without importing any server code.)"""

# the serving addresses of ``mindserve serve`` (the Python API has none: each start_* call names its own)
GRPC_ADDRESS = "127.0.0.1:5500"
REST_ADDRESS = "127.0.0.1:1500"
METRICS_ADDRESS = "127.0.0.1:8002"  # Triton's metrics port

# every server
MAX_MSG_MB_SIZE = 100  # the largest request or reply, MB
# REST servers
IDLE_TIMEOUT_S = 15.0  # a connection without a whole request head this long after it opened or answered is closed
MAX_CONNECTIONS = 1000  # open connections per REST server; past it a new one is answered 503

# the master
MAX_ENQUEUED_REQUESTS = 10000  # requests handed to workers and not yet answered, over all servables
MAX_REQUEST_INSTANCES = 10000  # instances one request may carry
RESTART_WAIT_S = 5.0  # how long a request waits for a restarted worker when its version has no live one
MAX_STREAM_MEMORY_MB = 256  # what all streams together may hold (answers not yet sent, frames not yet run)

# each servable version
DEVICE_IDS = (0,)
MAX_BATCH_SIZE = 0  # 0: the model's fixed batch size, or every instance queued
MAX_BATCH_DELAY_MS = 0.0  # 0: take what is queued at once
SHM_SIZE_MB = 64  # shared memory per worker for requests and replies
MAX_QUEUE_DELAY_MS = 0.0  # how long a request may wait to start (Triton's queue policy timeout); 0: no bound
NUM_PARALLEL_WORKERS = 0  # processes for Python stages, the device workers included: 0, every method in them
