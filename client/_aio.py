"""The asyncio client's implementation (public as ``mindserve.client.aio``)."""

from __future__ import annotations

from typing import Any, Mapping, Optional

import grpc
import numpy as np

from mindserve._proto import ms_service_pb2 as pb
from mindserve.client._client import (
    MODEL_METADATA,
    PREDICT,
    Instances,
    MethodTarget,
    Result,
    SSLConfig,
    grpc_error,
    input_types_of,
    metadata_reply_class,
    metadata_request,
    needs_types,
    parse_reply,
    with_unsent,
)


class Client(MethodTarget):
    """An asyncio client of one method of one servable: the arguments of ``mindserve.client.Client`` (address,
    servable_name, method_name, version_number, ssl_config, headers, timeout), without shared memory."""

    _wanted: Optional[dict[str, Optional[np.dtype]]]  # (MethodTarget's; mypy sees mindserve.client as Any)

    def __init__(
        self,
        address: str,
        servable_name: str,
        method_name: str,
        version_number: int = 0,
        ssl_config: Optional[SSLConfig] = None,
        headers: Optional[Mapping[str, str]] = None,
        timeout: Optional[float] = None,
    ):
        super().__init__(address, servable_name, method_name, version_number, ssl_config, headers, timeout)
        self._channel = self.channel(grpc.aio.insecure_channel, grpc.aio.secure_channel)
        self._predict = self._channel.unary_unary(
            PREDICT,
            request_serializer=pb.PredictRequest.SerializeToString,
            response_deserializer=pb.PredictReply.FromString,
        )

    async def infer(self, instances: Instances, timeout: Optional[float] = None) -> Result:
        """Call the method on one instance or a list of them: what ``mindserve.client.Client.infer`` returns (one
        dict per instance, ``{"error": msg}`` for a failed one, one ``{"error": msg}`` for a failed request). A
        cancelled coroutine cancels the call."""
        if self._wanted is None and needs_types(instances):
            try:
                self._wanted = await self.input_types(timeout)
            except RuntimeError:
                self._wanted = {}
        request, unsent = self._built(instances)
        if unsent and not request.instances:  # (no instance at all is sent: the server says what is wrong)
            return [unsent[i] for i in sorted(unsent)]
        try:
            reply = await self._predict(request, metadata=self._metadata, timeout=self._timeout(timeout))
        except grpc.RpcError as error:
            return grpc_error(error)
        return with_unsent(parse_reply(reply, len(request.instances)), unsent, len(request.instances) + len(unsent))

    async def input_types(self, timeout: Optional[float] = None) -> dict[str, Optional[np.dtype]]:
        """The numpy data type each input takes, None where no model fixes it (see the sync Client's)."""
        call = self._channel.unary_unary(
            MODEL_METADATA,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=metadata_reply_class().FromString,
        )
        try:
            reply = await call(
                metadata_request(self.servable_name, self.method_name, self.version_number),
                metadata=self._metadata,
                timeout=self._timeout(timeout),
            )
        except grpc.RpcError as error:
            raise RuntimeError(grpc_error(error)["error"]) from None
        return input_types_of(reply)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> "Client":
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()
