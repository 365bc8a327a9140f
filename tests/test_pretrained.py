"""The shipped model (mcvd.pretrained): its checksum guards every load, and it
is the network its training config in the repository describes."""
import shutil
from pathlib import Path

import pytest
import torch

import mcvd
from mcvd import pretrained
from mcvd.fileio import file_sha256
from mcvd.loader import read
from mcvd.train.config import load_run_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shipped():
    return pretrained.load("smmnist-demo-cpu")


def test_the_shipped_file_has_the_recorded_checksum():
    entry = pretrained.MODELS["smmnist-demo-cpu"]
    assert file_sha256(pretrained.path("smmnist-demo-cpu")) == entry.sha256
    assert pretrained.path("smmnist-demo-cpu").stat().st_size < 10 * 2**20


def test_it_is_the_network_its_config_trains(shipped):
    model, cfg = shipped
    runs = [load_run_config(REPO / c) for c in pretrained.MODELS["smmnist-demo-cpu"].configs]
    assert all(run.model == cfg for run in runs) and cfg.prediction == "x0"
    assert sum(run.training.steps for run in runs) == pretrained.MODELS["smmnist-demo-cpu"].steps
    assert not model.training
    x, cond, t = torch.zeros(1, 2, 1, 32, 32), -torch.ones(1, 2, 1, 32, 32), torch.tensor([10])
    with torch.no_grad():
        assert torch.isfinite(model(x, t, cond)).all()


def test_its_guidance_was_trained_for():
    """Guidance mixes in the network's prediction without the past frames: a stage of its training masked them."""
    entry = pretrained.MODELS["smmnist-demo-cpu"]
    assert entry.guidance == 2.0 and entry.sample_steps == 20
    last = load_run_config(REPO / entry.configs[-1])
    assert last.training.prob_mask_cond > 0
    assert read(pretrained.path("smmnist-demo-cpu")).run_config == last.to_dict()  # the file carries it


def test_a_damaged_copy_is_refused(tmp_path):
    copy = tmp_path / "copy.mcvd"
    shutil.copyfile(pretrained.path("smmnist-demo-cpu"), copy)
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit, inside the weights
    copy.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"file: .*copy\.mcvd has SHA-256 [0-9a-f]{64}, not the [0-9a-f]{64} recorded"):
        pretrained.load("smmnist-demo-cpu", file=copy)
    copy.write_bytes(bytes(data[:1000]))  # truncated
    with pytest.raises(ValueError, match="damaged or was replaced"):
        pretrained.load("smmnist-demo-cpu", file=copy)


def test_an_intact_copy_loads_and_a_missing_one_is_named(tmp_path, shipped):
    copy = tmp_path / "copy.mcvd"
    shutil.copyfile(pretrained.path("smmnist-demo-cpu"), copy)
    model, _ = pretrained.load("smmnist-demo-cpu", file=copy)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), shipped[0].state_dict().values()))
    with pytest.raises(FileNotFoundError, match="file: no such file"):
        pretrained.load("smmnist-demo-cpu", file=tmp_path / "absent.mcvd")


def test_unknown_name():
    with pytest.raises(ValueError, match=r"name: expected one of \['smmnist-demo-cpu'\], got 'kth'"):
        pretrained.load("kth")


@pytest.mark.slow
def test_optimize_computes_the_shipped_x0_network(shipped):
    """mcvd.optimize (what mcvd demo --optimize and mcvd sample run) on the shipped network, whose x0 output
    the network turns into eps through its schedule buffers, frozen as constants by the compile."""
    model, _ = shipped
    g = torch.Generator().manual_seed(0)
    x, cond = torch.randn(3, 2, 1, 32, 32, generator=g), torch.rand(3, 2, 1, 32, 32, generator=g) * 2 - 1
    t = torch.tensor([0, 400, 999])
    with torch.no_grad():
        eager = model(x, t, cond)
        fast = mcvd.optimize(model)(x, t, cond)
    assert ((fast - eager).norm() / eager.norm()).item() < 1e-4
