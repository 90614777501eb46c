"""``mindserve infer``: call one method of a served servable with one instance and print the result.

Needs only the client side (grpcio, protobuf, numpy): it never imports the server.
"""

from __future__ import annotations

import os
import sys
from typing import Optional, Sequence, TextIO

from mindserve.cli.values import (
    InputError,
    format_instance,
    json_names,
    parse_dtypes,
    parse_inputs,
    read_instances,
    typed,
)

EXIT_FAILED = 1  # the server (or the connection) answered with an error
EXIT_USAGE = 2  # the arguments cannot make a request


def infer(
    address: str,
    servable: str,
    method: str,
    inputs: Sequence[str],
    version: int = 0,
    ca: Optional[str] = None,
    cert: Optional[str] = None,
    key: Optional[str] = None,
    headers: Sequence[str] = (),
    token: Optional[str] = None,
    dtypes: Sequence[str] = (),
    instances_file: Optional[str] = None,
    out: Optional[TextIO] = None,
    err: Optional[TextIO] = None,
) -> int:
    """Send ``inputs`` (``name=value`` texts) as one instance; print one ``name=value ...`` line per instance
    on ``out``, or the error on ``err``. ``headers`` (``KEY=VALUE`` texts) and ``token`` (a bearer token) go with
    the call as metadata. Numbers written in JSON take the input's data type from the method's metadata;
    ``dtypes`` (``name=TYPE``) set types explicitly. ``instances_file`` (a JSON array of objects) sends several
    instances, ``inputs`` then adding to each. Returns the exit code: 0, 1 (an error answered) or 2 (bad
    arguments)."""
    from mindserve.client import Client, SSLConfig

    out = out or sys.stdout
    err = err or sys.stderr

    def usage_error(text: str) -> int:
        print(f"mindserve infer: error: {text}", file=err, flush=True)
        return EXIT_USAGE

    try:
        instance = parse_inputs(inputs)
        from_json = json_names(inputs)
        explicit = parse_dtypes(dtypes)
        instances = [{**item, **instance} for item in read_instances(instances_file)] if instances_file else [instance]
        if instances_file:
            from_json |= {name for item in instances for name in item if name not in instance}
    except InputError as exc:
        return usage_error(str(exc))
    for option, path in (("--ca", ca), ("--cert", cert), ("--key", key)):
        if path is not None and not os.path.isfile(path):
            return usage_error(f"{option}: file '{path}' does not exist")
    if (cert is None) != (key is None):
        return usage_error("--cert and --key go together")
    metadata: dict[str, str] = {}
    for header in headers:
        name, equals, value = header.partition("=")
        if not equals or not name.strip():
            return usage_error(
                f"--header: expected KEY=VALUE, got '{name}...'" if equals else "--header: expected KEY=VALUE"
            )
        metadata[name.strip().lower()] = value
    if token is not None:
        if not token.strip():
            return usage_error("--token: empty")
        metadata["authorization"] = f"Bearer {token.strip()}"
    ssl_config = None
    if ca is not None or cert is not None:
        ssl_config = SSLConfig(certificate=cert, private_key=key, custom_ca=ca)
    try:
        with Client(
            address, servable, method, version_number=version, ssl_config=ssl_config, headers=metadata or None
        ) as client:
            try:
                types = client.input_types(timeout=30) if from_json else {}
            except RuntimeError:  # no metadata from this server (an older one, or MindSpore's): values as written
                types = {}
            try:
                instances = [typed(item, from_json, types, explicit) for item in instances]
            except InputError as exc:
                return usage_error(str(exc))
            result = client.infer(instances)
    except RuntimeError as exc:  # an argument the client refuses: an empty name, a value of no wire type
        return usage_error(str(exc))
    if isinstance(result, dict):  # the whole request failed (or never reached the server)
        result = [result]
    code = 0
    for outputs in result:
        if set(outputs) == {"error"} and isinstance(outputs["error"], str):
            print(f"error: {outputs['error']}", file=err, flush=True)
            code = EXIT_FAILED
        else:
            print(format_instance(outputs), file=out, flush=True)
    return code
