"""The synchronous and asynchronous MSService client."""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Sequence, Union

import grpc
import numpy as np

from mindserve import _dtypes
from mindserve._checks import check_int, check_str
from mindserve._proto import ms_service_pb2 as pb
from mindserve.client._convert import fill_tensor, value_of
from mindserve.client._shared_memory import DEFAULT_THRESHOLD, ClientMemory, is_local

PREDICT = "/mindspore.serving.proto.MSService/Predict"
MODEL_METADATA = "/inference.GRPCInferenceService/ModelMetadata"
MAX_MESSAGE_BYTES = 512 << 20

Instances = Union[dict, Sequence[dict]]
Result = Union[list, dict]


class SSLConfig:
    """TLS for a client: ``custom_ca`` (PEM path) to trust the server's certificate (the system roots when
    None), and ``certificate`` plus ``private_key`` for servers that verify clients (mutual TLS)."""

    def __init__(
        self, certificate: Optional[str] = None, private_key: Optional[str] = None, custom_ca: Optional[str] = None
    ):
        for name, value in (("certificate", certificate), ("private_key", private_key), ("custom_ca", custom_ca)):
            if value is not None:
                check_str(name, value)
        if (certificate is None) != (private_key is None):
            raise RuntimeError("The certificate and private_key should be passed at the same time")
        self.certificate = certificate
        self.private_key = private_key
        self.custom_ca = custom_ca


def _read(path: Optional[str]) -> Optional[bytes]:
    if path is None:
        return None
    with open(path, "rb") as f:
        return f.read()


def grpc_error(error: grpc.RpcError) -> dict:
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = error.details() if hasattr(error, "details") else str(error)
    return {"error": f"Grpc Error, {code.value}, {details}"}


def parse_reply(reply: pb.PredictReply, count: int) -> Result:
    errors = reply.error_msg
    if len(errors) == 1 and errors[0].error_code != 0:
        return {"error": errors[0].error_msg.decode(errors="replace")}
    if errors and len(errors) != count:
        raise RuntimeError(f"error msg result size {len(errors)} not be 0, 1 or length of instances {count}")
    results = []
    for i, instance in enumerate(reply.instances):
        if errors and errors[i].error_code != 0:
            results.append({"error": errors[i].error_msg.decode(errors="replace")})
        else:
            results.append({name: value_of(tensor) for name, tensor in instance.items.items()})
    return results


def with_unsent(result: Result, unsent: dict[int, dict], total: int) -> Result:
    """The results of the instances sent, with the error of each instance that could not be sent in its place
    (a whole-request error stays one dict)."""
    if not unsent or isinstance(result, dict):
        return result
    sent = iter(result)
    return [unsent[i] if i in unsent else next(sent) for i in range(total)]


def _as_list(instances: Instances) -> Sequence:
    return instances if isinstance(instances, (list, tuple)) else [instances]


def needs_types(instances: Instances) -> bool:
    """Whether a value of these instances is typed by the method's metadata (a list or a Python scalar, which numpy
    would type as int64 / float64)."""
    return any(
        isinstance(value, (list, tuple, bool, int, float))
        for instance in _as_list(instances)
        if isinstance(instance, dict)
        for value in instance.values()
    )


def build_request(
    servable: str, method: str, version: int, instances: Instances, wanted: Mapping[str, Optional[np.dtype]]
) -> tuple[pb.PredictRequest, dict[int, dict]]:
    """The request of the instances that can be sent, and the error of each that cannot (by position): one
    instance's bad value does not keep the others from the server. ``wanted``: each input's data type, as the
    method's metadata gives it (lists and Python scalars take it where no value changes)."""
    instances = _as_list(instances)
    request = pb.PredictRequest()
    request.servable_spec.name = servable
    request.servable_spec.method_name = method
    request.servable_spec.version_number = version
    unsent: dict[int, dict] = {}
    for index, instance in enumerate(instances):
        if not isinstance(instance, dict):
            raise RuntimeError("instance should be a map")
        encoded = pb.Instance()
        try:
            for name, value in instance.items():
                if not isinstance(name, str):
                    raise RuntimeError(f"instance key should be str, but actually {type(name)}")
                fill_tensor(encoded.items[name], name, value, wanted.get(name))
        except RuntimeError as exc:
            if len(instances) == 1:
                raise  # one instance: the caller's mistake, as always
            unsent[index] = {"error": str(exc)}
            continue
        request.instances.append(encoded)
    return request, unsent


def metadata_request(servable: str, method: str, version: int) -> Any:
    """The Open Inference Protocol's ModelMetadata request of the model ``servable.method``."""
    from mindserve._proto import grpc_inference as oip

    request_class: Any = oip.ModelMetadataRequest
    return request_class(name=f"{servable}.{method}", version=str(version) if version else "")


def metadata_reply_class() -> Any:
    from mindserve._proto import grpc_inference as oip

    return oip.ModelMetadataResponse


def input_types_of(reply: Any) -> dict[str, Optional[np.dtype]]:
    """The numpy data type of each input a ModelMetadataResponse lists (None: no model fixes it)."""
    types: dict[str, Optional[np.dtype]] = {}
    for tensor in reply.inputs:
        code = _dtypes.CODE_OF_OIP_NAME.get(tensor.datatype)
        types[tensor.name] = _dtypes.NUMPY_OF.get(code) if code is not None else None
    return types


def channel_options(address: str, ssl_config: Optional[SSLConfig]) -> list[tuple[str, Any]]:
    """The options of a client's channel: message size limits, and the authority a certificate is checked
    against over a unix: socket."""
    options: list[tuple[str, Any]] = [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ]
    if ssl_config is not None and address.startswith("unix:"):
        # gRPC's default authority for a unix: target is the socket path, while a server certificate names a
        # host: verify it against localhost, as for a local TCP server
        options.append(("grpc.default_authority", "localhost"))
    return options


def channel_credentials(ssl_config: SSLConfig) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=_read(ssl_config.custom_ca),
        private_key=_read(ssl_config.private_key),
        certificate_chain=_read(ssl_config.certificate),
    )


class MethodTarget:
    """What both clients (this module's and ``mindserve.client.aio``'s) hold of the method they call: its address
    and names, checked, the metadata sent with every call, the default timeout, and the data type each input takes
    (asked of the server the first time a list or a Python scalar is sent; None: not asked yet, {} when the server
    does not say). ``channel(insecure, secure)`` makes the gRPC channel with grpc's or grpc.aio's factories."""

    _wanted: Optional[dict[str, Optional[np.dtype]]]

    def __init__(
        self,
        address: str,
        servable_name: str,
        method_name: str,
        version_number: int,
        ssl_config: Optional[SSLConfig],
        headers: Optional[Mapping[str, str]],
        timeout: Optional[float],
    ):
        check_str("address", address)
        check_str("servable_name", servable_name)
        check_str("method_name", method_name)
        check_int("version_number", version_number, 0)
        if ssl_config is not None and not isinstance(ssl_config, SSLConfig):
            raise RuntimeError("The type of ssl_config should be type of SSLConfig")
        self._ssl_config = ssl_config
        self._metadata = metadata_of(headers)
        self.timeout = check_timeout(timeout)
        self.address = address
        self.servable_name = servable_name
        self.method_name = method_name
        self.version_number = version_number
        self._wanted = None

    def channel(self, insecure: Callable[..., Any], secure: Callable[..., Any]) -> Any:
        options = channel_options(self.address, self._ssl_config)
        if self._ssl_config is None:
            return insecure(self.address, options=options)
        return secure(self.address, channel_credentials(self._ssl_config), options=options)

    def _timeout(self, timeout: Optional[float]) -> Optional[float]:
        return self.timeout if timeout is None else check_timeout(timeout)

    def _built(self, instances: Instances) -> tuple[pb.PredictRequest, dict[int, dict]]:
        return build_request(self.servable_name, self.method_name, self.version_number, instances, self._wanted or {})


class ClientAsyncResult:
    """The pending result of ``Client.infer_async``."""

    def __init__(
        self,
        future: Optional[grpc.Future],
        count: int,
        error: Optional[Result] = None,
        unsent: Optional[dict[int, dict]] = None,
    ):
        self._future = future
        self._count = count
        self._error = error
        self._unsent = unsent or {}

    def result(self, timeout: Optional[float] = None) -> Result:
        """Wait for the reply and return what ``Client.infer`` would have returned."""
        if self._error is not None or self._future is None:
            return self._error or {"error": "no request was sent"}
        try:
            result = parse_reply(self._future.result(timeout), self._count)
        except grpc.RpcError as error:
            return grpc_error(error)
        return with_unsent(result, self._unsent, self._count + len(self._unsent))


def check_timeout(timeout: Optional[float]) -> Optional[float]:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise RuntimeError(
            f"Parameter 'timeout' should be a positive number of seconds or None, but actually {timeout!r}"
        )
    return float(timeout)


def metadata_of(headers: Optional[Mapping[str, str]]) -> Optional[tuple[tuple[str, str], ...]]:
    """Headers as gRPC metadata: string keys and values, keys lowercased."""
    if headers is None:
        return None
    if not isinstance(headers, Mapping):
        raise RuntimeError(f"Parameter 'headers' should be a dict of str to str, but actually {type(headers)}")
    for key, value in headers.items():
        if not isinstance(key, str) or not key or not isinstance(value, str):
            raise RuntimeError(
                f"Parameter 'headers' should be a dict of str to str, but has {key!r}: {type(value).__name__}"
            )
    return tuple((key.lower(), value) for key, value in headers.items())


class Client(MethodTarget):
    """A client of one method of one servable.

    Args:
        address: ``"host:port"`` or ``"unix:/path"``.
        servable_name: the servable to call.
        method_name: its method.
        version_number: a version, or 0 for the newest one the server runs.
        ssl_config: ``SSLConfig`` to connect with TLS.
        headers: metadata sent with every call, e.g. ``{"authorization": "Bearer <token>"}`` or a restricted
            group's key (keys are lowercased, as gRPC requires).
        timeout: seconds a call may take (None: no limit); ``infer(..., timeout=)`` sets one call's. A call past
            it answers ``{"error": "Grpc Error, (4, 'deadline exceeded'), ..."}``.
        shared_memory: for a server on this host (``unix:`` or loopback) started with ``allow_client_shm``:
            ``infer`` sends numeric inputs of at least ``shared_memory_threshold`` bytes through a file the client
            creates in /dev/shm, and gets such outputs back through it once it has seen their size (MindSpore
            Serving's ``shm_data`` and ``output_buffers``). The file is removed at ``close``.
    """

    def __init__(
        self,
        address: str,
        servable_name: str,
        method_name: str,
        version_number: int = 0,
        ssl_config: Optional[SSLConfig] = None,
        headers: Optional[Mapping[str, str]] = None,
        timeout: Optional[float] = None,
        shared_memory: bool = False,
        shared_memory_threshold: int = DEFAULT_THRESHOLD,
    ):
        super().__init__(address, servable_name, method_name, version_number, ssl_config, headers, timeout)
        self._memory: Optional[ClientMemory] = None
        if shared_memory:
            if not is_local(address):
                raise RuntimeError(
                    f"shared_memory needs a server on this host: a unix: or loopback address, not {address}"
                )
            check_int("shared_memory_threshold", shared_memory_threshold, 1)
            self._memory = ClientMemory(shared_memory_threshold)
        self._channel = self.channel(grpc.insecure_channel, grpc.secure_channel)
        self._predict = self._channel.unary_unary(
            PREDICT,
            request_serializer=pb.PredictRequest.SerializeToString,
            response_deserializer=pb.PredictReply.FromString,
        )

    def _request(self, instances: Instances, timeout: Optional[float]) -> tuple[pb.PredictRequest, dict[int, dict]]:
        """The request (see ``build_request``), the method's input types asked of the server the first time a value
        needs them; nothing when the server does not answer (a MindSpore Serving server, metadata guarded with other
        credentials): values then go as numpy types them."""
        if self._wanted is None and needs_types(instances):
            try:
                self._wanted = self.input_types(timeout)
            except RuntimeError:
                self._wanted = {}
        return self._built(instances)

    def infer(self, instances: Instances, timeout: Optional[float] = None) -> Result:
        """Call the method on one instance (a dict of input name to value) or a list of them.

        Values: numpy arrays and scalars, lists (made numpy arrays), bool / int / float, str, bytes. Lists and
        Python scalars take the data type the method's metadata gives the input when that changes no value
        (integers to a float32 input become float32); the metadata is asked once, the first time. Returns a
        list with one dict per instance (output name to numpy array, str or bytes; ``{"error": msg}`` for a
        failed instance, or one whose value could not be sent), or one ``{"error": msg}`` dict when the whole
        request failed. ``timeout``: seconds for this call (default: the Client's).
        """
        request, unsent = self._request(instances, self._timeout(timeout))
        if unsent and not request.instances:  # (no instance at all is sent: the server says what is wrong)
            return [unsent[i] for i in sorted(unsent)]
        signatures = self._memory.place(request) if self._memory is not None else []
        try:
            reply = self._predict(request, metadata=self._metadata, timeout=self._timeout(timeout))
        except grpc.RpcError as error:
            return grpc_error(error)
        if self._memory is not None:
            self._memory.collect(reply, signatures)
        return with_unsent(parse_reply(reply, len(request.instances)), unsent, len(request.instances) + len(unsent))

    def infer_async(self, instances: Instances, timeout: Optional[float] = None) -> ClientAsyncResult:
        """Like ``infer`` without waiting: ``.result()`` on the returned object gives what ``infer`` returns.
        (Calls in flight together would share the shared memory file: these send their tensors inline.)"""
        request, unsent = self._request(instances, self._timeout(timeout))
        if unsent and not request.instances:
            return ClientAsyncResult(None, 0, [unsent[i] for i in sorted(unsent)])
        try:
            future = self._predict.future(request, metadata=self._metadata, timeout=self._timeout(timeout))
        except grpc.RpcError as error:
            return ClientAsyncResult(None, 0, grpc_error(error))
        return ClientAsyncResult(future, len(request.instances), unsent=unsent)

    def input_types(self, timeout: Optional[float] = None) -> dict[str, Optional[np.dtype]]:
        """The numpy data type each input of the method takes, None where no model fixes it (a Python stage takes
        the input), as the server's metadata says (the Open Inference Protocol's ModelMetadata of the model
        ``servable.method``, on the same port). Raises RuntimeError when the server does not answer it."""
        call = self._channel.unary_unary(
            MODEL_METADATA,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=metadata_reply_class().FromString,
        )
        try:
            reply = call(
                metadata_request(self.servable_name, self.method_name, self.version_number),
                metadata=self._metadata,
                timeout=self._timeout(timeout),
            )
        except grpc.RpcError as error:
            raise RuntimeError(grpc_error(error)["error"]) from None
        return input_types_of(reply)

    def close(self) -> None:
        self._channel.close()
        if self._memory is not None:
            self._memory.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()
