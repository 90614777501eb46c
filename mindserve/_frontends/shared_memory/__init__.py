"""Clients' shared memory: how a client's file is opened and read (``client_file.py``, for every form), whose
files are taken (``owners.py``), the regions clients register (``regions.py``) and tensors that lie in them
(``tensors.py``), shared by the gRPC and REST doors of the Open Inference Protocol, MindSpore's ``shm_data`` and
the media streams' frames."""
