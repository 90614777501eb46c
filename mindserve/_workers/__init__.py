"""The device worker process: imports one servable's servable_config.py, loads its models on one device and
runs method stages on batches of instances sent by the master (``python -m mindserve._workers``)."""
