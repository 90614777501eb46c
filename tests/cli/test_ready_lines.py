"""What `mindserve serve` says once it is ready: besides the servables and the addresses, what is on that a
client or an operator meets at once (the groups access control guards, clients' shared memory); nothing more
when neither is on."""

from __future__ import annotations

from mindserve.cli.config import load_config
from mindserve.cli.serve import _ready_lines
from support.paths import BUNDLED_SERVABLES

SECRET = "a JWT HMAC secret of more than 32 bytes"


def lines(tmp_path, environ: dict) -> list:
    config = load_config(None, environ=environ, cwd=str(tmp_path), bundled_directory=BUNDLED_SERVABLES)
    return _ready_lines(config, [])


def test_nothing_on_adds_nothing(tmp_path):
    assert lines(tmp_path, {}) == [
        "gRPC listening on 127.0.0.1:5500",
        "REST listening on http://127.0.0.1:1500",
        "metrics on http://127.0.0.1:8002/metrics",
        "ready; Ctrl-C or SIGTERM stops it",
    ]


def test_access_control_and_client_shared_memory_are_said(tmp_path):
    said = lines(
        tmp_path,
        {
            "MINDSERVE_AUTH_JWT_SECRET": SECRET,
            "MINDSERVE_ALLOW_CLIENT_SHM": "true",
            "MINDSERVE_CLIENT_SHM_OWNERS": "1001",
        },
    )
    assert said[3:] == [
        "access control: metadata, inference, shared-memory, statistics, metrics guarded (bearer tokens); open: health",
        "metrics need credentials too: give the scraper a token or key (access: in serving.yaml, MINDSERVE_AUTH_*)",
        "client shared memory: on (Triton's regions, MindSpore's shm_data, media-stream frames), files of this user "
        "and of 1001",
        "ready; Ctrl-C or SIGTERM stops it",
    ]


def test_restricted_keys_guard_only_their_groups(tmp_path):
    said = lines(
        tmp_path, {"MINDSERVE_AUTH_RESTRICTED": "inference:infer-key=s3cret", "MINDSERVE_METRICS_ADDRESS": "off"}
    )
    assert said[2:] == [
        "access control: inference guarded (keys); open: health, metadata, shared-memory, statistics, metrics",
        "ready; Ctrl-C or SIGTERM stops it",
    ]
