"""The Open Inference Protocol's gRPC messages (``grpc_inference.proto``), built in a descriptor pool of their own
(see ``private_pool``: tritonclient registers the same names in protobuf's default pool)."""

from __future__ import annotations

from mindserve._proto import private_pool

PROTO_FILE = "mindserve/_proto/grpc_inference.proto"  # the file's name in the pool (protoc ran from the root)
SERVICE_NAME = "inference.GRPCInferenceService"

POOL = private_pool.load("grpc_inference.desc")
DESCRIPTOR = POOL.FindFileByName(PROTO_FILE)


def _message(name: str) -> type:
    return private_pool.message_class(POOL, f"inference.{name}")


ServerLiveRequest = _message("ServerLiveRequest")
ServerLiveResponse = _message("ServerLiveResponse")
ServerReadyRequest = _message("ServerReadyRequest")
ServerReadyResponse = _message("ServerReadyResponse")
ModelReadyRequest = _message("ModelReadyRequest")
ModelReadyResponse = _message("ModelReadyResponse")
ServerMetadataRequest = _message("ServerMetadataRequest")
ServerMetadataResponse = _message("ServerMetadataResponse")
ModelMetadataRequest = _message("ModelMetadataRequest")
ModelMetadataResponse = _message("ModelMetadataResponse")
InferParameter = _message("InferParameter")
InferTensorContents = _message("InferTensorContents")
ModelInferRequest = _message("ModelInferRequest")
ModelInferResponse = _message("ModelInferResponse")
ModelStatisticsRequest = _message("ModelStatisticsRequest")
ModelStatisticsResponse = _message("ModelStatisticsResponse")
ModelStreamInferResponse = _message("ModelStreamInferResponse")
SystemSharedMemoryStatusRequest = _message("SystemSharedMemoryStatusRequest")
SystemSharedMemoryStatusResponse = _message("SystemSharedMemoryStatusResponse")
SystemSharedMemoryRegisterRequest = _message("SystemSharedMemoryRegisterRequest")
SystemSharedMemoryRegisterResponse = _message("SystemSharedMemoryRegisterResponse")
SystemSharedMemoryUnregisterRequest = _message("SystemSharedMemoryUnregisterRequest")
SystemSharedMemoryUnregisterResponse = _message("SystemSharedMemoryUnregisterResponse")
CudaSharedMemoryStatusRequest = _message("CudaSharedMemoryStatusRequest")
CudaSharedMemoryStatusResponse = _message("CudaSharedMemoryStatusResponse")
CudaSharedMemoryRegisterRequest = _message("CudaSharedMemoryRegisterRequest")
CudaSharedMemoryRegisterResponse = _message("CudaSharedMemoryRegisterResponse")
CudaSharedMemoryUnregisterRequest = _message("CudaSharedMemoryUnregisterRequest")
CudaSharedMemoryUnregisterResponse = _message("CudaSharedMemoryUnregisterResponse")
