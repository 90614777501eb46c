"""Helpers for the tests of the bundled servables: run an example's serving_server.py as a server process and
its serving_client.py as a command, both from example/<name>/."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

from support.paths import REPO
from support.processes import ServerProcess, start_server


def example_script(name: str, script: str) -> str:
    """The path of example/<name>/<script>."""
    return os.path.join(REPO, "example", name, script)


def start_example_server(tmp_path: pathlib.Path, name: str, address: str) -> ServerProcess:
    """Run example/<name>/serving_server.py on ``address`` (its command-line argument) until stopped."""
    script = example_script(name, "serving_server.py")
    return start_server(
        tmp_path,
        f"""
        import runpy
        sys.argv = [{script!r}, {address!r}]
        runpy.run_path({script!r}, run_name="__main__")
    """,
        address,
    )


def run_example_client(name: str, *args: str) -> str:
    """Run example/<name>/serving_client.py with ``args``; returns what it printed, after checking it exited 0."""
    done = subprocess.run(
        [sys.executable, example_script(name, "serving_client.py"), *args], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout
