import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))  # tests/naive.py


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu_timeout(seconds): scripts/gpu_tests.py's per-test limit for this test "
                                       "(subprocesses, long loops) instead of its default")


@pytest.fixture(autouse=True)
def _fresh_seed():
    """Fresh random inputs every run; the seed is printed, so a failing run can be replayed
    with FLASHCORE_TEST_SEED=<seed>."""
    seed = int(os.environ.get("FLASHCORE_TEST_SEED", int.from_bytes(os.urandom(4), "little")))
    torch.manual_seed(seed)
    print(f"seed {seed}")
    yield
