"""The README's "Write your own servable in a few minutes" run as written: its make_model.py, servable_config.py
and serving.yaml blocks are taken from README.md itself, and each `$ ` command of its step 4 is run (as a shell
splits it) with the project's venv first on PATH (as `. .venv/bin/activate` puts it) and must print exactly what
the README shows. Substitutions, so that the test never meets another server or depends on a home folder: free
ports for 5600 and 5602, and the test's folder for /home/me."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys

import pytest

from support.paths import REPO
from support.processes import ServerProcess, free_port

pytestmark = pytest.mark.server  # starts real server processes (see tests/conftest.py)

SECTION = "## Write your own servable in a few minutes"


def walkthrough() -> str:
    with open(os.path.join(REPO, "README.md")) as f:
        text = f.read()
    start = text.index(SECTION)
    return text[start : text.index("\n## ", start + len(SECTION))]


def blocks(section: str, language: str) -> list[str]:
    """The fenced blocks of ``language`` ("" for a fence without one), fences read in pairs."""
    found: list[str] = []
    current: list[str] | None = None  # the lines of the block being read, None between blocks
    lang = ""
    for line in section.splitlines(keepends=True):
        if line.startswith("```"):
            if current is None:
                current, lang = [], line[3:].strip()
            else:
                if lang == language:
                    found.append("".join(current))
                current = None
        elif current is not None:
            current.append(line)
    return found


def console(section: str) -> list[tuple[str, list[str]]]:
    """The `$ command` lines of the first console block with a `$`, each with the lines printed after it."""
    block = next(b for b in blocks(section, "") if b.startswith("$ "))
    steps: list[tuple[str, list[str]]] = []
    for line in block.splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], []))
        elif line:
            steps[-1][1].append(line)
    return steps


@pytest.fixture
def folder(tmp_path):
    section = walkthrough()
    python = blocks(section, "python")
    make_model = next(b for b in python if b.startswith("# make_model.py"))
    config = next(b for b in python if "register.register_method" in b)
    yaml = blocks(section, "yaml")[0]
    port, metrics_port = free_port(), free_port()
    (tmp_path / "my_servables" / "affine" / "1").mkdir(parents=True)  # step 1's mkdir -p
    (tmp_path / "make_model.py").write_text(make_model)
    (tmp_path / "my_servables" / "affine" / "servable_config.py").write_text(config)
    (tmp_path / "serving.yaml").write_text(yaml.replace("5600", str(port)).replace("5602", str(metrics_port)))
    return tmp_path, port, metrics_port, console(section)


def test_the_walkthrough_prints_what_the_readme_shows(folder):
    tmp, port, metrics_port, steps = folder
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}

    def expected(lines: list[str]) -> list[str]:
        return [
            line.replace("5600", str(port)).replace("5602", str(metrics_port)).replace("/home/me", str(tmp))
            for line in lines
        ]

    server = None
    try:
        for command, printed in steps:
            command = command.replace("5600", str(port))
            if command.startswith("mindserve serve"):
                proc = subprocess.Popen(
                    shlex.split(command), cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
                )
                server = ServerProcess(proc, f"127.0.0.1:{port}")
                server.read_until("ready; Ctrl-C or SIGTERM stops it\n", 90)
                assert server.output.splitlines() == expected(printed)
                continue
            done = subprocess.run(shlex.split(command), cwd=tmp, env=env, capture_output=True, text=True, timeout=120)
            assert (done.stdout + done.stderr).splitlines() == expected(printed), command
    finally:
        if server is not None:
            server.stop(signal.SIGTERM)
