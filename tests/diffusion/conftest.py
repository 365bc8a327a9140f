"""Fixtures of the diffusion tests: a seeded RNG, one intra-op thread."""
import pytest
import torch


@pytest.fixture(autouse=True)
def seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="package")
def one_thread():
    """These tests run thousands of ops on tiny tensors, where waking a thread
    pool costs more than the work (20x on a loaded 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
