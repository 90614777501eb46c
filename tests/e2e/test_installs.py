"""The test environment is the product's environment: what `pip install -e '.[serve]'` resolves (README's first
command) has the numpy the tests run with, so that a stage's numeric behaviour under test is what users get.
(MindSpore, which pins numpy below 2, runs its tests in an environment of its own: README's test command.)"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.server  # a pip resolution in a process of its own: tens of seconds

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_the_serve_install_resolves_the_numpy_the_tests_run_with(tmp_path):
    report = tmp_path / "serve.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--ignore-installed",
            "--quiet",
            "--report",
            str(report),
            "-e",
            f"{ROOT}[serve]",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    resolved = {
        item["metadata"]["name"].lower(): item["metadata"]["version"]
        for item in json.loads(report.read_text())["install"]
    }
    assert resolved["numpy"] == importlib.metadata.version("numpy")
