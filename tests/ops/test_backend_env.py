"""MCVD_BACKEND: a value that is not a backend, or not one available for the tensors, is an error naming
the variable (not an explicit backend= argument that the caller never passed)."""
import pytest
import torch

import mcvd
from mcvd.ops._backend import check_env_backend


@pytest.fixture(autouse=True)
def _fresh_cache(monkeypatch):
    from mcvd.ops import _backend

    monkeypatch.setattr(_backend, "_resolved", {})


def test_an_unknown_name_is_named_as_the_variable(monkeypatch):
    monkeypatch.setenv("MCVD_BACKEND", "junk")
    x = torch.randn(1, 4, 3, 3)
    with pytest.raises(ValueError, match=r"MCVD_BACKEND: 'junk' is not a backend: expected one of "
                                         r"\('reference', 'cpu', 'cuda', 'triton'\) or the variable unset"):
        mcvd.ops.spatin_norm(x, 2)
    with pytest.raises(ValueError, match="MCVD_BACKEND: 'junk' is not a backend"):
        check_env_backend("cpu")
    # An explicit argument still names the argument.
    monkeypatch.delenv("MCVD_BACKEND")
    with pytest.raises(ValueError, match=r"backend: expected one of .* or None, got 'junk'"):
        mcvd.ops.spatin_norm(x, 2, backend="junk")


def test_a_backend_missing_for_the_device_is_named_as_the_variable(monkeypatch):
    monkeypatch.setenv("MCVD_BACKEND", "cuda")
    with pytest.raises(RuntimeError, match=r"MCVD_BACKEND: 'cuda' is not available for spatin_norm on cpu tensors"):
        mcvd.ops.spatin_norm(torch.randn(1, 4, 3, 3), 2)
    with pytest.raises(RuntimeError, match=r"MCVD_BACKEND: 'cuda' is not available for the ops on cpu tensors"):
        check_env_backend("cpu")


def test_unset_or_a_valid_name_passes(monkeypatch):
    monkeypatch.delenv("MCVD_BACKEND", raising=False)
    assert check_env_backend("cpu") is None
    monkeypatch.setenv("MCVD_BACKEND", "")
    assert check_env_backend("cpu") is None
    monkeypatch.setenv("MCVD_BACKEND", "reference")
    assert check_env_backend(torch.device("cpu")) == "reference"
