"""The channel between the master and one worker process.

Messages are a JSON header plus raw tensor bytes: tensors cross the process boundary as plain descriptors and
bytes, never pickled. ``messages`` defines the framing and the tensor packing; ``master_side`` is the asyncio end
the master holds per worker; ``worker_side`` the blocking end inside the worker.
"""
