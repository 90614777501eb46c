"""Tensors in clients' shared memory regions, as the Open Inference Protocol names them: the tensor parameters
``shared_memory_region`` (string), ``shared_memory_offset`` and ``shared_memory_byte_size`` (integers) on an
input or a requested output, as ``tritonclient``'s ``set_shared_memory`` writes them. Both transports hand
their parameters over as plain values (``parameter_values`` for gRPC's InferParameter)."""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Optional, Sequence

from mindserve import _dtypes
from mindserve._errors import FeatureDisabled, InvalidInput, clip
from mindserve._frontends.oip.tensors import Data, InputTensor, OutputTensor, join_bytes
from mindserve._frontends.shared_memory.client_file import LARGE_READ
from mindserve._frontends.shared_memory.regions import ClientRegions, Lease
from mindserve._frontends.tensor_checks import check_data_size, invalid_input

REGION = "shared_memory_region"
OFFSET = "shared_memory_offset"
BYTE_SIZE = "shared_memory_byte_size"
DISABLED = (
    "client shared memory is disabled: start the server with allow_client_shm=True to use it "
    "(allow_client_shm: true in serving.yaml, or MINDSERVE_ALLOW_CLIENT_SHM=true)"
)
CUDA_UNSUPPORTED = "CUDA shared memory is not supported by this server: register system shared memory instead"


def enabled(regions: Optional[ClientRegions]) -> ClientRegions:
    """The regions of a server that takes client shared memory; FeatureDisabled for one that does not."""
    if regions is None:
        raise FeatureDisabled(DISABLED)
    return regions


class Reference(NamedTuple):
    region: str
    offset: int
    byte_size: int


def parameter_values(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """gRPC InferParameters as plain values (whichever of their fields is set)."""
    values = {}
    for key, parameter in parameters.items():
        choice = parameter.WhichOneof("parameter_choice")
        values[key] = getattr(parameter, choice) if choice else None
    return values


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def reference(what: str, parameters: Mapping[str, Any]) -> Optional[Reference]:
    """The shared memory a tensor's parameters name, checked; None when they name none. ``what`` names the
    tensor in errors ("input x")."""
    if REGION not in parameters:
        if OFFSET in parameters or BYTE_SIZE in parameters:
            raise InvalidInput(f"{what}: {OFFSET} and {BYTE_SIZE} need {REGION}")
        return None
    region, offset, size = parameters[REGION], parameters.get(OFFSET, 0), parameters.get(BYTE_SIZE)
    if not isinstance(region, str) or not region:
        raise InvalidInput(f"{what}: {REGION} should be a region's name, a string")
    if not _integer(offset) or offset < 0:
        raise InvalidInput(f"{what}: {OFFSET} should be an integer >= 0")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidInput(f"{what}: {BYTE_SIZE} should be an integer >= 0")
    return Reference(region, offset, size)


class SharedInput(InputTensor):
    """An input whose data lies in a client's region, copied out (once) when the tensor is read: exactly its
    tensor's byte size, within what the request may read (both checked before any byte is)."""

    def __init__(self, name: str, datatype: str, shape: tuple, lease: Lease, ref: Reference):
        super().__init__(name, datatype, shape)
        self._lease = lease
        self._region = lease.get(ref.region)  # held until the request is answered
        self._ref = ref

    @property
    def read_size(self) -> int:
        """The bytes reading this input would take, as the client declared them (not yet checked)."""
        return self._ref.byte_size

    def numeric_data(self, code: int) -> Data:
        check_data_size(self.name, code, self.shape, self._ref.byte_size)
        return self._lease.read(self._region, self._ref.offset, self._ref.byte_size, f"input {clip(self.name)}").data

    def bytes_items(self, count: int) -> list:
        raise invalid_input(self.name, "Tensor check failed: BYTES inputs cannot come from shared memory here")


def shared_input(
    lease: Optional[Lease], name: str, datatype: str, shape: tuple, parameters: Mapping[str, Any]
) -> Optional[SharedInput]:
    """The input when its parameters put it in shared memory (FeatureDisabled without a lease: the server was
    started without client shared memory); None otherwise."""
    if lease is None and REGION in parameters:
        raise FeatureDisabled(DISABLED)
    ref = reference(f"input {clip(name)}", parameters)
    if ref is None or lease is None:
        return None
    if _dtypes.CODE_OF_OIP_NAME.get(datatype) == _dtypes.MS_BYTES:
        raise invalid_input(name, "Tensor check failed: BYTES inputs cannot come from shared memory here")
    return SharedInput(name, datatype, shape, lease, ref)


def large_reads(inputs: Sequence[InputTensor]) -> bool:
    """Whether making these inputs reads so much of clients' shared memory that it must run off the event loop."""
    return sum(t.read_size for t in inputs if isinstance(t, SharedInput)) >= LARGE_READ


def output_references(
    lease: Optional[Lease], requested: list[tuple[str, Mapping[str, Any]]]
) -> dict[str, tuple[Reference, Any]]:
    """The requested outputs to be written into shared memory: name -> (reference, region), the regions held."""
    found = {}
    for name, parameters in requested:
        if lease is None and REGION in parameters:
            raise FeatureDisabled(DISABLED)
        ref = reference(f"output {clip(name)}", parameters)
        if ref is not None and lease is not None:
            found[name] = (ref, lease.get(ref.region))
    return found


def write_output(output: OutputTensor, ref: Reference, region: Any) -> OutputTensor:
    """Write an output into its region; the output as answered then: its data type and shape, no data."""
    data = memoryview(join_bytes(output.items) if output.items is not None else (output.data or b"")).cast("B")
    if len(data) > ref.byte_size:
        raise InvalidInput(f"output {clip(output.name)} needs {len(data)} bytes, its {BYTE_SIZE} is {ref.byte_size}")
    region.write(ref.offset, data, f"output {clip(output.name)}")
    return OutputTensor(output.name, output.datatype, output.shape, None, None)
