import pytest
import torch

from model_src.config import get_preset
from model_src.system import build_system


@pytest.fixture(scope="session")
def tiny():
    return get_preset("tiny")


@pytest.fixture(scope="session")
def tiny_system(tiny):
    return build_system(tiny, seed=0)

