import pytest
import torch
from cli_helpers import TINY_RUN

from mcvd.train import RunConfig, train


@pytest.fixture(autouse=True)
def _restore_threads():
    """Restore torch's thread count, which `mcvd demo` sets for its process."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """A training checkpoint of the tiny model (2 steps)."""
    work = tmp_path_factory.mktemp("tiny_run")
    return train(RunConfig.from_dict(TINY_RUN), work, progress=False).checkpoint
