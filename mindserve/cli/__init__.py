"""The ``mindserve`` command (also ``python -m mindserve``):

    mindserve serve [--config serving.yaml] [--servable-directory DIR] [--grpc-address A] [--rest-address A]
                    [--metrics-address A]
    mindserve infer ADDRESS SERVABLE METHOD [name=value ...] [--version N] [--ca F] [--cert F --key F]

Exit codes: 0 done (for ``serve``: stopped by SIGINT or SIGTERM), 1 failed (``serve`` could not start, or
``infer`` got an error back), 2 bad arguments or configuration (nothing was started or sent).
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from mindserve import __version__
from mindserve.cli import access_settings
from mindserve.cli import config as _config

__all__ = ["main"]

EXIT_USAGE = 2


def _serve_epilog() -> str:
    variables = "\n".join(
        [f"  {name:35} {text}" for name, _, text in _config.ENV_VARS]
        + [f"  {name:35} {text}" for name, text in access_settings.ENV_VARS]
    )
    return f"""\
Settings, later ones win: defaults, then the --config file, then environment variables, then options.

Defaults: gRPC on {_config.DEFAULT_GRPC_ADDRESS}, REST on {_config.DEFAULT_REST_ADDRESS}, Prometheus metrics
(GET /metrics) on {_config.DEFAULT_METRICS_ADDRESS}; the servable
directory is ./servables when it exists, else the bundled servables of the checkout
({_config.BUNDLED_SERVABLES}); every servable found in it (a folder holding servable_config.py) is served,
newest version, on device 0.

The --config file (YAML; unknown keys are errors; relative paths are relative to the file):
  servable_directory: servables          # default folder of the servables below
  servables:                             # absent or empty: every servable found there
    - add                                # a name alone: default settings
    - name: digits
      directory: other/servables         # default: servable_directory
      version: 1                         # default 0: the newest version folder
      device_ids: [0, 1]                 # one worker per device; default [0]
      device_type: CPU                   # CPU (default), GPU or Ascend
      max_batch_size: 32                 # default 0: the model's batch size, or all queued
      max_batch_delay_ms: 2              # default 0: no waiting for a batch to fill
      shm_size_mb: 64                    # shared memory per worker (default 64)
      num_parallel_workers: 4            # processes for Python stages, device workers included (0-64)
      max_queue_delay_ms: 100            # default 0: a request's work may wait any time to start
  grpc_address: 127.0.0.1:5500           # host:port or unix:/path; null turns it off
  rest_address: 127.0.0.1:1500           # the same; null turns it off
  metrics: 127.0.0.1:8002                # GET /metrics (Prometheus); null turns it off
  tls:                                   # for every server
    certificate: server.pem
    private_key: server.key
    ca: ca.pem                           # optional: the CA of client certificates
    verify_client: false                 # true: refuse clients without one
  max_msg_mb_size: 100                   # largest request or reply, MB (1 to 512)
  max_enqueued_requests: 10000           # requests that may wait, over all servables
  max_request_instances: 10000           # instances one request may carry
  max_stream_memory_mb: 256              # what all streams may hold (answers not sent, frames not run)
  log_level: info                        # debug, info, warning or error (the master's log lines)
  port_offset: 0                         # added to the default ports: another instance on this host
  ava: {{servable: frames, method: intensity, batch_size: 1}}   # video-analytics streams that name none
  allow_client_shm: false                # true: clients on this host may register shared memory
  client_shm_owners: []                  # users whose shm files it takes too (names or uids: [ava, 1001])
  access:                                # who may call what (every server); secrets in env or files
    restricted:                          # groups: health, metadata, inference, shared-memory, ...
      inference: {{header: infer-key, value_env: INFER_KEY}}
    jwt: {{secret_file: jwt.secret, algorithms: [HS256], groups_claim: scope}}
    client_certificates: {{client.example.com: [inference]}}   # with tls.verify_client
    consumers: {{app: {{secret_env: APP_SECRET}}}}               # tokens at /token and /oauth/token

Environment variables (an empty one counts as unset):
{variables}

Prints where it listens and which servables are ready; SIGINT (Ctrl-C) or SIGTERM stops it (exit code 0).
Exit code 1: starting failed; 2: bad configuration (nothing started)."""


INFER_EPILOG = """\
Values:
  3 / 1.5 / true            a number or bool: a 0-d tensor, int32 / float32 / bool (as in MindSpore's REST form)
  [[1, 2], [3, 4]]          a JSON array: int32 when all ints, float32 when any float, bool when all bools
  @x.npy                    the array saved in a .npy file, dtype and shape kept
  @digit.png, @file.bin     any other file: its bytes (image servables take encoded image bytes)
  text, '"42"'              anything else is sent as a string; a JSON string ('"42"', '"@x"') as its text

Numbers written in JSON take the data type the method's metadata gives the input (integers to an FP32 input
become float32); --dtype NAME=TYPE sets one. --instances FILE sends several instances: a JSON array of objects
of input names and JSON values.

Prints one line per instance, output=value by output name (numpy's repr), e.g.
  y=array([[2., 2.], [2., 2.]], dtype=float32)
An error answered is printed on stderr, exit code 1; bad arguments exit with 2.

Examples, against `mindserve serve`:
  mindserve infer 127.0.0.1:5500 add add_cast 'x1=[[1, 2], [3, 4]]' 'x2=[[1, 1], [1, 1]]'
  mindserve infer 127.0.0.1:5500 iris predict 'x=[5.1, 3.5, 1.4, 0.2]'
  mindserve infer 127.0.0.1:5500 digits classify_top1 image=@example/digits/test_images/0004_4.png
  mindserve infer unix:/tmp/mindserve.sock add add_common x1=@x1.npy x2=@x2.npy"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mindserve", description="Serve servables, or call a served one.")
    parser.add_argument("--version", action="version", version=f"mindserve {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = commands.add_parser(
        "serve",
        help="serve servables over gRPC and REST until Ctrl-C or SIGTERM",
        description="Serve servables over gRPC and REST until Ctrl-C or SIGTERM.",
        epilog=_serve_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--config", metavar="FILE", help="a YAML file of settings (see below)")
    serve.add_argument("--servable-directory", metavar="DIR", help="the folder holding the servables")
    serve.add_argument(
        "--grpc-address",
        metavar="ADDRESS",
        help=f"host:port or unix:/path (default {_config.DEFAULT_GRPC_ADDRESS}); off turns gRPC off",
    )
    serve.add_argument(
        "--rest-address",
        metavar="ADDRESS",
        help=f"host:port or unix:/path (default {_config.DEFAULT_REST_ADDRESS}); off turns REST off",
    )
    serve.add_argument(
        "--metrics-address",
        metavar="ADDRESS",
        help=f"host:port or unix:/path of GET /metrics (default {_config.DEFAULT_METRICS_ADDRESS}); off turns it off",
    )
    serve.add_argument(
        "--port-offset",
        metavar="N",
        help="added to the default ports (5500, 1500, 8002), for another instance on this host",
    )
    serve.add_argument("--log-level", metavar="LEVEL", help="debug, info (the default), warning or error")

    # listed here for `mindserve --help`; its arguments are parsed by _infer_parser (see main)
    commands.add_parser("infer", help="call a method of a served servable and print the result", add_help=False)
    return parser


def _infer_parser() -> argparse.ArgumentParser:
    infer = argparse.ArgumentParser(
        prog="mindserve infer",
        description="Call METHOD of SERVABLE at ADDRESS with one instance made of the "
        "name=value inputs, and print the result.",
        epilog=INFER_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    infer.add_argument("address", metavar="ADDRESS", help="host:port or unix:/path of the gRPC server")
    infer.add_argument("servable", metavar="SERVABLE")
    infer.add_argument("method", metavar="METHOD")
    infer.add_argument("inputs", metavar="name=value", nargs="*", help="an input of the method (see Values)")
    infer.add_argument(
        "--version", type=int, default=0, metavar="N", help="the servable version (default 0: the newest running)"
    )
    infer.add_argument("--ca", metavar="FILE", help="CA certificate (PEM) to trust the server's; turns TLS on")
    infer.add_argument("--cert", metavar="FILE", help="client certificate (PEM), for mutual TLS")
    infer.add_argument("--key", metavar="FILE", help="its private key (PEM)")
    infer.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="metadata sent with the call, e.g. a restricted group's key (repeatable)",
    )
    infer.add_argument("--token", metavar="TOKEN", help="a bearer token, sent as 'authorization: Bearer TOKEN'")
    infer.add_argument(
        "--dtype",
        action="append",
        default=[],
        metavar="NAME=TYPE",
        help="the numpy type of an input (float32, int64, ...), whatever the metadata says",
    )
    infer.add_argument(
        "--instances",
        metavar="FILE",
        help="a JSON array of objects, one instance each (name=value inputs add to every one)",
    )
    return infer


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``mindserve`` command with ``argv`` (``sys.argv[1:]`` when None); returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["infer"]:
        # intermixed: options may come after the name=value inputs (a subparser cannot parse them so)
        args = _infer_parser().parse_intermixed_args(argv[1:])
        if args.version < 0:
            print("mindserve infer: error: --version: expected an int >= 0", file=sys.stderr)
            return EXIT_USAGE
        from mindserve.cli.infer import infer

        return infer(
            args.address,
            args.servable,
            args.method,
            args.inputs,
            version=args.version,
            ca=args.ca,
            cert=args.cert,
            key=args.key,
            headers=args.header,
            token=args.token,
            dtypes=args.dtype,
            instances_file=args.instances,
        )
    args = _parser().parse_args(argv)
    try:
        serve_config = _config.load_config(
            args.config,
            options={
                "servable_directory": args.servable_directory,
                "grpc_address": args.grpc_address,
                "rest_address": args.rest_address,
                "metrics": args.metrics_address,
                "port_offset": args.port_offset,
                "log_level": args.log_level,
            },
        )
    except _config.ConfigError as exc:
        print(f"mindserve serve: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    for warning in serve_config.warnings:
        print(f"mindserve serve: warning: {warning}", file=sys.stderr)
    from mindserve.cli.serve import serve

    return serve(serve_config)
