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

