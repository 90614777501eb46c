"""Clients' shared memory: the regions they register (``regions.py``) and tensors that lie in them
(``tensors.py``), shared by the gRPC and REST doors of the Open Inference Protocol."""
