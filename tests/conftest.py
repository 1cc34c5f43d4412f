import os

import torch

if not torch.cuda.is_available():  # Triton kernels run in the interpreter on a CPU (set before they are defined)
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest

from model_src.config import get_preset
from model_src.system import build_system


@pytest.fixture(scope="session")
def tiny():
    return get_preset("tiny")


@pytest.fixture(scope="session")
def tiny_system(tiny):
    return build_system(tiny, seed=0)


@pytest.fixture(scope="session")
def tiny_ort_engines(tmp_path_factory):
    """`streamer build --preset tiny --backend ort` once per test session (~45 s); tests only read it."""
    from streamer.cli import main

    out = tmp_path_factory.mktemp("engines") / "tiny_ort"
    assert main(["build", "--preset", "tiny", "--backend", "ort", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def tiny_batch_engines(tmp_path_factory):
    """`streamer build --preset tiny --backend ort --batch 4` once per test session: 4 sessions per call."""
    from streamer.cli import main

    out = tmp_path_factory.mktemp("engines") / "tiny_ort_b4"
    assert main(["build", "--preset", "tiny", "--backend", "ort", "--batch", "4", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def speech_ort_engines(tmp_path_factory):
    """`streamer build --preset tiny-speech --backend ort` (its shipped weights) once per test session."""
    from streamer.cli import main

    out = tmp_path_factory.mktemp("engines") / "speech_ort"
    assert main(["build", "--preset", "tiny-speech", "--backend", "ort", "--out", str(out)]) == 0
    return out


def pytest_terminal_summary(terminalreporter):
    """Print the numbers the tests measured (oracle errors, losses) whatever the capture mode."""
    from helpers import MEASURED

    if MEASURED:
        terminalreporter.section("measured by the tests")
        for line in MEASURED:
            terminalreporter.write_line(line)
