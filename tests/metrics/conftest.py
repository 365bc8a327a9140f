"""Fixtures of the metric tests: a weight cache per test session, a seeded
RNG and the real I3D check clip."""
import pytest
import torch
from metric_helpers import I3D_CHECK, read_gif


@pytest.fixture(autouse=True, scope="session")
def weight_cache(tmp_path_factory):
    """Converted weights go to a fresh folder, never to the user's cache."""
    mp = pytest.MonkeyPatch()
    path = tmp_path_factory.mktemp("mcvd_cache")
    mp.setenv("MCVD_CACHE", str(path))
    yield path
    mp.undo()


@pytest.fixture(autouse=True)
def seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def cricket() -> torch.Tensor:
    """The real Kinetics clip of the I3D check, [79, 3, 224, 224] in [-1, 1]."""
    path = I3D_CHECK / "cricket_rgb.gif"
    if not path.is_file():
        pytest.skip(f"the I3D check clip {path} is not there")
    return read_gif(path)
