"""The access settings of `mindserve serve`: the `access:` section of serving.yaml and the MINDSERVE_AUTH_*
variables become the server's AccessConfig (bad ones exit 2, secrets in the file are warned about), and
`mindserve infer --header / --token` reach a server that asks for them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import jwt
import pytest

from mindserve.cli.config import ConfigError, load_config
from mindserve.server import AccessConfig, JWTConfig
from support.paths import BUNDLED_SERVABLES
from support.processes import ServerProcess, free_port

pytestmark = pytest.mark.server  # starts real server processes (see tests/conftest.py)

SECRET = "an HMAC secret of more than thirty-two bytes"
PYTHON_M = [sys.executable, "-m", "mindserve"]


def load(tmp_path, yaml_text: str = "", environ: dict | None = None):
    path = tmp_path / "serving.yaml"
    path.write_text(f"servable_directory: {BUNDLED_SERVABLES}\nservables: [add]\n" + yaml_text)
    return load_config(str(path), environ=environ or {}, cwd=str(tmp_path))


def test_no_access_settings_no_access_config(tmp_path):
    config = load(tmp_path)
    assert config.access is None and config.warnings == ()


def test_the_access_section_with_secrets_from_the_environment_and_files(tmp_path):
    (tmp_path / "jwt.secret").write_text(SECRET + "\n")
    config = load(
        tmp_path,
        """\
access:
  restricted:
    inference: {header: infer-key, value_env: INFER_KEY}
    "health,metadata": {header: admin-key, value_file: jwt.secret}
  jwt: {secret_file: jwt.secret, audience: api, groups_claim: null}
  client_certificates: {client.example.com: [inference, metadata]}
  consumers: {app: {secret_env: APP_SECRET}}
  token_ttl_s: 600
""",
        {"INFER_KEY": "s3cret", "APP_SECRET": "app-secret"},
    )
    assert config.access == AccessConfig(
        restricted={"inference": ("infer-key", "s3cret"), "health,metadata": ("admin-key", SECRET)},
        jwt=JWTConfig(secret=SECRET, algorithms=("HS256",), audience="api", groups_claim=None),
        client_certificates={"client.example.com": ("inference", "metadata")},
        consumers={"app": "app-secret"},
        token_ttl_s=600.0,
    )
    assert config.warnings == ()


def test_a_secret_written_in_the_file_is_taken_with_a_warning(tmp_path):
    config = load(tmp_path, "access:\n  restricted:\n    inference: {header: infer-key, value: s3cret}\n")
    assert config.access.restricted == {"inference": ("infer-key", "s3cret")}
    assert config.warnings == (
        f"{tmp_path}/serving.yaml: access.restricted.inference.value: a secret written in the configuration file; "
        f"it belongs in the environment (value_env) or in a file (value_file)",
    )


def test_environment_variables_override_the_file(tmp_path):
    config = load(
        tmp_path,
        "access:\n  restricted:\n    health: {header: probe-key, value_env: PROBE}\n",
        {
            "PROBE": "p",
            "MINDSERVE_AUTH_RESTRICTED": "inference:infer-key=s3cret; metadata:meta-key=m",
            "MINDSERVE_AUTH_JWT_SECRET": SECRET,
            "MINDSERVE_AUTH_JWT_ALGORITHMS": "HS384,HS512",
            "MINDSERVE_AUTH_JWT_GROUPS_CLAIM": "groups",
            "MINDSERVE_AUTH_CONSUMERS": "a:1,b:2",
        },
    )
    assert config.access == AccessConfig(
        restricted={"inference": ("infer-key", "s3cret"), "metadata": ("meta-key", "m")},
        jwt=JWTConfig(secret=SECRET, algorithms=("HS384", "HS512"), groups_claim="groups"),
        consumers={"a": "1", "b": "2"},
    )


@pytest.mark.parametrize(
    "yaml_text, environ, message",
    [
        (
            "access:\n  restricted:\n    inference: {header: k, value: v}\n    infrence: {header: k2, value: v2}\n",
            {},
            "{yaml}: access: unknown group 'infrence' in restricted['infrence']; the groups are health, metadata, "
            "inference, shared-memory, statistics, metrics",
        ),
        (
            "access:\n  jwt: {secret_env: JWT_SECRET}\n",
            {"JWT_SECRET": "short"},
            "{yaml}: access: jwt.secret has 5 bytes; an HMAC secret needs at least 32 (e.g. python -c 'import secrets; "
            "print(secrets.token_urlsafe(48))')",
        ),
        (
            "access:\n  jwt: {secret_env: JWT_SECRET}\n",
            {},
            "{yaml}: access.jwt.secret_env: the environment variable JWT_SECRET is not set",
        ),
        (
            "access:\n  restricted:\n    inference: {header: k}\n",
            {},
            "{yaml}: access.restricted.inference: give exactly one of value_env, value_file and value",
        ),
        (
            "access:\n  tokens: 1\n",
            {},
            "{yaml}: access.tokens: unknown key (known keys: restricted, jwt, client_certificates, consumers, "
            "token_ttl_s)",
        ),
        (
            "",
            {"MINDSERVE_AUTH_RESTRICTED": "inference=s3cret"},
            "MINDSERVE_AUTH_RESTRICTED: expected GROUPS:HEADER=VALUE (several joined by ';'), got "
            "'inference=s3cret:...'",
        ),
        (
            "",
            {"MINDSERVE_AUTH_JWT_SECRET": SECRET, "MINDSERVE_AUTH_JWT_ALGORITHMS": "none"},
            "access settings: jwt.algorithms: unknown or unsafe algorithm 'none'; use HS256, HS384, HS512 with a "
            "secret "
            "or ES256, ES256K, ES384, ES512, EdDSA, PS256, PS384, PS512, RS256, RS384, RS512 with a public key",
        ),
    ],
)
def test_bad_access_settings_name_where_they_came_from(tmp_path, yaml_text, environ, message):
    with pytest.raises(ConfigError) as info:
        load(tmp_path, yaml_text, environ)
    assert str(info.value) == message.format(yaml=f"{tmp_path}/serving.yaml")


def test_infer_sends_headers_and_tokens_to_a_guarded_server(tmp_path):
    port = free_port()
    env = {
        **os.environ,
        "MINDSERVE_SERVABLE_DIRECTORY": BUNDLED_SERVABLES,
        "MINDSERVE_SERVABLES": "add",
        "MINDSERVE_GRPC_ADDRESS": f"127.0.0.1:{port}",
        "MINDSERVE_REST_ADDRESS": "off",
        "MINDSERVE_METRICS_ADDRESS": "off",
        "MINDSERVE_AUTH_RESTRICTED": "inference:infer-key=s3cret",
        "MINDSERVE_AUTH_JWT_SECRET": SECRET,
    }
    proc = subprocess.Popen(
        [*PYTHON_M, "serve"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=str(tmp_path), env=env
    )
    server = ServerProcess(proc, f"127.0.0.1:{port}")
    try:
        server.read_until("ready; Ctrl-C or SIGTERM stops it\n", 60)
        address, inputs = f"127.0.0.1:{port}", ("x1=[[1, 2], [3, 4]]", "x2=[[1, 1], [1, 1]]")

        def infer(*extra: str) -> subprocess.CompletedProcess:
            return subprocess.run(
                [*PYTHON_M, "infer", address, "add", "add_cast", *inputs, *extra],
                capture_output=True,
                text=True,
                timeout=60,
            )

        done = infer()
        assert (done.returncode, done.stderr) == (
            1,
            "error: Grpc Error, (16, 'unauthenticated'), This API is "
            "restricted, expecting header 'infer-key' or a valid bearer "
            "token\n",
        )
        expected = (0, "y=array([[2., 3.], [4., 5.]], dtype=float32)\n", "")
        done = infer("--header", "Infer-Key=s3cret")
        assert (done.returncode, done.stdout, done.stderr) == expected
        token = jwt.encode({"scope": "inference", "exp": int(time.time()) + 60}, SECRET, algorithm="HS256")
        done = infer("--token", token)
        assert (done.returncode, done.stdout, done.stderr) == expected
        done = infer("--header", "no-equals-sign")
        assert (done.returncode, done.stderr) == (2, "mindserve infer: error: --header: expected KEY=VALUE\n")
    finally:
        server.stop(signal.SIGTERM)
