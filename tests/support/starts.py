"""start_servables run in a process of its own (the master is never started inside pytest), and how that start
ended: the error it raised, the worker processes left, whether the process then ended by itself."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from typing import Optional

from support.processes import child_pids

START_TIMEOUT_S = 120  # until the script has written its outcome (workers import onnxruntime: slow on 2 cores)
EXIT_GRACE_S = 10  # after that, until the process has ended by itself

SCRIPT = """\
import json
import os
import sys
from mindserve import server


def _outcome(error):
    with open("outcome.tmp", "w") as f:
        json.dump({{"error": error}}, f)
    os.replace("outcome.tmp", "outcome.json")


try:
{body}
except RuntimeError as exc:
    error = str(exc)
else:
    error = None
{after}
_outcome(error)
"""


@dataclass
class StartOutcome:
    error: Optional[str]  # the RuntimeError text, None when start_servables raised none
    exit_code: Optional[int]  # None: still running EXIT_GRACE_S after its outcome was written (then killed)
    leftover: list  # live child processes (workers) of the script right after the outcome was written
    output: str  # what it printed (stdout and stderr)


def run_start(tmp_path, body: str, after: str = "") -> StartOutcome:
    """Run ``body`` (which should raise RuntimeError) in a new process, then ``after``; the script writes the
    error text to outcome.json (a file, so that nothing depends on pipes that worker processes might hold)."""
    script = tmp_path / "start_script.py"
    script.write_text(
        SCRIPT.format(body=textwrap.indent(textwrap.dedent(body).strip(), "    "), after=textwrap.dedent(after).strip())
    )
    outcome_file = tmp_path / "outcome.json"
    log_file = tmp_path / "start_script.log"
    if outcome_file.exists():
        outcome_file.unlink()  # from an earlier run in the same test
    with open(log_file, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, str(script)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=str(tmp_path),
        )
    exit_code, leftover, error = None, [], None
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not outcome_file.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if outcome_file.exists():
            error = json.loads(outcome_file.read_text())["error"]
            leftover = child_pids(proc.pid)
            try:
                exit_code = proc.wait(EXIT_GRACE_S)
            except subprocess.TimeoutExpired:
                pass
        else:
            exit_code = proc.poll()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = log_file.read_text()
    assert outcome_file.exists(), f"the start script wrote no outcome (exit code {exit_code}):\n{output}"
    return StartOutcome(error, exit_code, leftover, output)


def assert_clean_failure(outcome: StartOutcome) -> None:
    """start_servables raised, no worker is left, and the script then ended by itself with code 0."""
    assert outcome.error is not None, outcome.output
    assert outcome.leftover == [], f"worker processes left after a failed start: {outcome.leftover}"
    assert outcome.exit_code == 0, (
        f"after a failed start the process did not exit by itself within "
        f"{EXIT_GRACE_S} s (exit code {outcome.exit_code}); output:\n{outcome.output}"
    )


def start_call(root: str, name: str = "svc", **kwargs) -> str:
    args = "".join(f", {k}={v!r}" for k, v in kwargs.items())
    return f"server.start_servables(server.ServableStartConfig({root!r}, {name!r}{args}))"
