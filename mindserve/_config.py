"""The configuration objects of ``mindserve.server``, with MindSpore Serving's argument checks."""

from __future__ import annotations

from typing import Optional, Sequence, Union

from mindserve import _defaults
from mindserve._checks import check_int, check_str

DEVICE_TYPES = ("cpu", "gpu", "ascend")


class ServableStartConfig:
    """Which servable to start, from where, on which devices.

    Args:
        servable_directory: the folder that holds servable folders.
        servable_name: the servable's folder name, holding servable_config.py and version folders.
        device_ids: one worker process is started per device id (an int or a sequence of ints).
        version_number: the version folder to serve; 0 serves the newest one.
        device_type: None or "CPU" (the default), "GPU" (ONNX Runtime's CUDA provider, or MindSpore built for GPU) or
            "Ascend" (ONNX Runtime's CANN provider, or MindSpore for Ascend), case ignored.
        num_parallel_workers: the number of processes that run the servable's Python stages (0 to 64), the device
            workers included, as in MindSpore Serving: above the number of device ids, the difference runs as
            extra processes that run Python stages only (no model loaded in them) while the device workers run
            the model stages; at most the number of device ids (0, the default), every method runs whole in its
            device worker.
        max_batch_size: the most instances a worker runs together (taken from many requests); 0 means the
            model's fixed batch size, or for a model with a dynamic batch dim every instance queued.
        max_batch_delay_ms: how long a worker may wait for a batch to fill after its first instance arrived;
            0 (the default, as in MindSpore Serving) takes whatever is queued at once.
        shm_size_mb: shared memory per worker for requests and replies (half each); a request larger than a
            quarter of it is split into several jobs. Reserved at start: /dev/shm must have room for it.
        max_queue_delay_ms: how long a request's work may wait to start (0, the default: no bound, as in MindSpore
            Serving; Triton's queue policy timeout): work still queued past it is dropped unstarted and the request
            answered DEADLINE_EXCEEDED (it also ends sooner when the request's own deadline comes first).
    """

    def __init__(
        self,
        servable_directory: str,
        servable_name: str,
        device_ids: Union[int, Sequence[int], None] = None,
        version_number: int = 0,
        device_type: Optional[str] = None,
        num_parallel_workers: int = _defaults.NUM_PARALLEL_WORKERS,
        max_batch_size: int = _defaults.MAX_BATCH_SIZE,
        max_batch_delay_ms: float = _defaults.MAX_BATCH_DELAY_MS,
        shm_size_mb: int = _defaults.SHM_SIZE_MB,
        max_queue_delay_ms: float = _defaults.MAX_QUEUE_DELAY_MS,
    ):
        self.servable_directory = check_str("servable_directory", servable_directory)
        self.servable_name = check_str("servable_name", servable_name)
        self.version_number = check_int("version_number", version_number, 0)
        self.num_parallel_workers = check_int("num_parallel_workers", num_parallel_workers, 0, 64)
        self.max_batch_size = check_int("max_batch_size", max_batch_size, 0, 1 << 20)
        if (
            isinstance(max_batch_delay_ms, bool)
            or not isinstance(max_batch_delay_ms, (int, float))
            or not 0 <= max_batch_delay_ms <= 60000
        ):
            raise RuntimeError(
                f"Parameter 'max_batch_delay_ms' should be a number in [0, 60000], but actually {max_batch_delay_ms!r}"
            )
        self.max_batch_delay_ms = float(max_batch_delay_ms)
        if (
            isinstance(max_queue_delay_ms, bool)
            or not isinstance(max_queue_delay_ms, (int, float))
            or not 0 <= max_queue_delay_ms <= 3_600_000
        ):
            raise RuntimeError(
                f"Parameter 'max_queue_delay_ms' should be a number in [0, 3600000], but actually "
                f"{max_queue_delay_ms!r}"
            )
        self.max_queue_delay_ms = float(max_queue_delay_ms)
        self.shm_size_mb = check_int("shm_size_mb", shm_size_mb, 4, 1 << 20)
        if device_ids is None:
            device_ids = _defaults.DEVICE_IDS
        elif isinstance(device_ids, int) and not isinstance(device_ids, bool):
            device_ids = (device_ids,)
        if not isinstance(device_ids, (list, tuple)) or not device_ids:
            raise RuntimeError(
                f"Parameter 'device_ids' should be int or tuple/list of int, but actually {device_ids!r}"
            )
        for item in device_ids:
            if isinstance(item, bool) or not isinstance(item, int):
                raise RuntimeError(
                    f"Parameter 'device_ids' should be int or tuple/list of int, but actually {device_ids!r}"
                )
            if item < 0:
                raise RuntimeError(f"The item value '{item}' in parameter 'device_ids' should be >= 0")
        if len(set(device_ids)) != len(device_ids):
            raise RuntimeError(f"The item value in parameter 'device_ids' should not be repeated: {list(device_ids)}")
        self.device_ids = tuple(device_ids)
        if device_type is not None and (not isinstance(device_type, str) or device_type.lower() not in DEVICE_TYPES):
            raise RuntimeError(
                f"Unsupported device type '{device_type}', only support 'Ascend', 'GPU', 'CPU' and None, case ignored"
            )
        self.device_type = device_type.lower() if device_type else None


class SSLConfig:
    """TLS for a server: its certificate chain and private key (PEM file paths); with ``verify_client=True``
    clients must present a certificate signed by ``custom_ca`` (mutual TLS)."""

    def __init__(
        self, certificate: str, private_key: str, custom_ca: Optional[str] = None, verify_client: bool = False
    ):
        self.certificate = check_str("certificate", certificate)
        self.private_key = check_str("private_key", private_key)
        self.custom_ca = check_str("custom_ca", custom_ca) if custom_ca is not None else None
        if not isinstance(verify_client, bool):
            raise RuntimeError(f"Parameter 'verify_client' should be bool, but actually {type(verify_client)}")
        if verify_client and self.custom_ca is None:
            raise RuntimeError("Parameter 'custom_ca' should be given when 'verify_client' is True")
        self.verify_client = verify_client


MAX_MEDIA_BATCH = 64  # frames one media stream may gather into a batch


class MediaStreamConfig:
    """What a video-analytics media stream (MediaGraphExtension/ProcessMediaStream) runs when its descriptor's
    ``extension_configuration`` names no servable and method: ``method`` of ``servable`` (``version`` 0: the
    newest), which takes the frame as its one input, ``batch_size`` frames at a time (1 to 64)."""

    def __init__(self, servable: str, method: str, version: int = 0, batch_size: int = 1):
        self.servable = check_str("servable", servable)
        self.method = check_str("method", method)
        self.version = check_int("version", version, 0)
        self.batch_size = check_int("batch_size", batch_size, 1, MAX_MEDIA_BATCH)

    def __repr__(self) -> str:
        return (
            f"MediaStreamConfig(servable={self.servable!r}, method={self.method!r}, version={self.version}, "
            f"batch_size={self.batch_size})"
        )
