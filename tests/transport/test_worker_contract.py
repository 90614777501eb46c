"""The worker's command line and control messages, defined once for both sides: what supervision writes is what
the worker reads back, and anything else is refused as a usage error."""

from __future__ import annotations

import pytest

from mindserve._transport import worker_contract as contract
from mindserve._transport.worker_contract import WorkerArgs


def test_the_arguments_the_master_writes_are_the_ones_the_worker_reads():
    args = WorkerArgs(7, 8, 9, "/srv/servables", "add", 2, 1, "gpu", 32, 2.5)
    assert args.to_argv() == [
        "--control-fd",
        "7",
        "--shm-fd",
        "8",
        "--event-fd",
        "9",
        "--servable-directory",
        "/srv/servables",
        "--name",
        "add",
        "--version",
        "2",
        "--device-id",
        "1",
        "--device-type",
        "gpu",
        "--max-batch-size",
        "32",
        "--max-batch-delay-ms",
        "2.5",
    ]
    assert WorkerArgs.from_argv(args.to_argv()) == args


def test_optional_arguments_keep_their_defaults():
    args = WorkerArgs(3, 4, 5, "/s", "iris", 1, 0)
    assert "--device-type" not in args.to_argv()
    assert WorkerArgs.from_argv(args.to_argv()) == args
    assert (args.device_type, args.max_batch_size, args.max_batch_delay_ms) == (None, 0, 0.0)


def test_a_command_line_without_a_required_argument_is_a_usage_error(capsys):
    argv = WorkerArgs(3, 4, 5, "/s", "iris", 1, 0).to_argv()
    without_name = argv[: argv.index("--name")] + argv[argv.index("--name") + 2 :]
    with pytest.raises(SystemExit) as exited:
        WorkerArgs.from_argv(without_name)
    assert exited.value.code == 2
    assert "the following arguments are required: --name" in capsys.readouterr().err


def test_control_messages():
    assert contract.ready_message(42, {"m": {}}, None) == {
        "op": "ready",
        "pid": 42,
        "methods": {"m": {}},
        "seldon": None,
    }
    assert contract.failed_message("no model") == {"op": "failed", "error": "no model"}
    assert contract.stats_request(3) == {"op": "stats", "id": 3}
    assert contract.stats_reply(3, {"m": {}}) == {"op": "stats", "id": 3, "stats": {"m": {}}}
