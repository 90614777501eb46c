"""The bundled frames servable served by its example script to video-analytics media streams, and the example
client as a user runs it: frames embedded and through shared memory, the intensity classifier and the digit
reader, and a batched stream whose last frames are answered after the client half-closes."""

from __future__ import annotations

import filecmp
import os

import pytest

from support.examples import run_example_client, start_example_server
from support.paths import BUNDLED_SERVABLES
from support.processes import free_port

pytestmark = pytest.mark.server

INTENSITY = [
    f"ack {i + 2} t={3000 * i} {'bright' if i % 2 == 0 else 'dark'} frame {i}: "
    f"{'light' if i % 2 == 0 else 'dark'} 0.902"
    for i in range(6)
]


@pytest.fixture(scope="module")
def frames_address(tmp_path_factory):
    server = start_example_server(tmp_path_factory.mktemp("frames"), "media_stream", f"127.0.0.1:{free_port()}")
    yield server.address
    assert server.stop() == 0, server.output


@pytest.mark.parametrize("transfer", [[], ["--shared-memory"]])
def test_intensity_of_frames_embedded_or_in_shared_memory(frames_address, transfer):
    printed = run_example_client("media_stream", frames_address, *transfer).splitlines()
    assert printed == ["stream open (server message 1 acknowledges 1)", *INTENSITY]
    assert not [f for f in os.listdir("/dev/shm") if f.startswith("media-stream-example-")]  # the client cleaned up


def test_digits_in_frames(frames_address):
    printed = run_example_client("media_stream", frames_address, "--method", "digit", "--shared-memory")
    labels = [line.split(": ")[1].split()[0] for line in printed.splitlines()[1:]]
    names = [line.split()[3] for line in printed.splitlines()[1:]]
    assert labels == [name.split("_")[1][0] for name in names] == ["0", "4", "8", "2", "6", "0"]


def test_a_batched_stream_answers_the_rest_after_half_close(frames_address):
    printed = run_example_client("media_stream", frames_address, "--batch-size", "4").splitlines()
    assert printed[1:] == [
        "ack 2 t=0 bright frame 0: -",
        "ack 3 t=3000 dark frame 1: -",
        "ack 4 t=6000 bright frame 2: -",
        "ack 5 t=9000 dark frame 3: light 0.902, dark 0.902, light 0.902, dark 0.902",
        "ack 6 t=12000 bright frame 4: -",
        "ack 7 t=15000 dark frame 5: -",
        "ack 0 t=15000 (the last batch): light 0.902, dark 0.902",
    ]


def test_the_frames_servable_reads_digits_with_the_digits_model():
    assert filecmp.cmp(
        os.path.join(BUNDLED_SERVABLES, "frames", "1", "digits_mlp.onnx"),
        os.path.join(BUNDLED_SERVABLES, "digits", "1", "digits_mlp.onnx"),
        shallow=False,
    )
