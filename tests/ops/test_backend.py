"""Backend dispatch: what is available, explicit choices, MCVD_BACKEND, auto logging."""
import logging

import pytest
import torch

import mcvd
from mcvd.ops import _backend


def test_build_info_names_the_cpu_backend():
    info = mcvd._C.build_info()
    assert info["version"] == mcvd.__version__
    assert "cpu" in info["backends"]
    # ATen's dispatch level, as torch reports it itself
    assert info["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert isinstance(info["cuda_archs"], str)


def test_this_build_has_the_cpp_autograd_kernels():
    for op in ("mcvd::spatin_norm_fwd", "mcvd::attention_fwd"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op, "Autograd"), op


def test_a_build_without_the_autograd_kernels_is_refused(monkeypatch):
    """An extension built from older sources (autograd still in Python) would
    leave the ops without gradients; importing mcvd.ops names the fix."""
    monkeypatch.setattr(torch._C, "_dispatch_has_kernel_for_dispatch_key", lambda op, key: False)
    with pytest.raises(ImportError, match=r"mcvd._C has no autograd kernel for mcvd::spatin_norm_fwd: .*rebuild it: "
                                          r"pip install --no-build-isolation --no-deps -e \."):
        mcvd.ops._check_build()


def test_available_backends_on_cpu():
    avail = mcvd.ops.available_backends("cpu")
    assert avail[:2] == ["reference", "cpu"]
    assert "cuda" not in avail


def test_unknown_backend_is_rejected():
    x = torch.randn(1, 4, 2, 2)
    with pytest.raises(ValueError, match=r"backend: expected one of .*'reference'.* got 'cpp'"):
        mcvd.ops.spatin_norm(x, 2, backend="cpp")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_unavailable_backend_names_the_available_ones():
    x = torch.randn(1, 4, 2, 2)
    with pytest.raises(RuntimeError, match=r"backend: 'cuda' is not available for spatin_norm on cpu tensors; "
                                           r"available here: \['reference', 'cpu'"):
        mcvd.ops.spatin_norm(x, 2, backend="cuda")


def test_env_var_sets_the_default(monkeypatch):
    monkeypatch.setenv("MCVD_BACKEND", "reference")
    assert _backend.resolve("attention", torch.device("cpu"), None) == "reference"
    monkeypatch.setenv("MCVD_BACKEND", "nope")
    with pytest.raises(ValueError, match="backend: expected one of"):
        _backend.resolve("attention", torch.device("cpu"), None)


def test_auto_choice_is_logged_once(monkeypatch, caplog):
    monkeypatch.delenv("MCVD_BACKEND", raising=False)
    monkeypatch.setattr(_backend, "_resolved", {})
    with caplog.at_level(logging.INFO, logger="mcvd.ops"):
        assert _backend.resolve("reverse_step", torch.device("cpu"), None, torch.float32) == "cpu"
        _backend.resolve("reverse_step", torch.device("cpu"), None, torch.float32)
    lines = [r.getMessage() for r in caplog.records if "reverse_step" in r.getMessage()]
    assert lines == ["mcvd.ops.reverse_step on cpu float32: auto backend 'cpu' (available: " +
                     str(mcvd.ops.available_backends("cpu")) + ")"]


def test_auto_table_names_known_ops_and_backends():
    for key, order in _backend.AUTO_CUDA.items():
        op = key if isinstance(key, str) else key[0]
        assert op in ("spatin_norm", "attention", "reverse_step", "dropout"), key
        assert order and set(order) <= set(_backend.BACKENDS), key


def test_auto_choice_on_cuda_follows_the_dtype(monkeypatch):
    """A (op, dtype) entry overrides the op's order on CUDA; other dtypes and
    ops keep the op's order, and a backend missing from the install is passed over."""
    monkeypatch.delenv("MCVD_BACKEND", raising=False)
    monkeypatch.setattr(_backend, "AUTO_CUDA", {"attention": ("cuda", "triton"),
                                                ("attention", torch.float32): ("triton", "cuda"),
                                                "spatin_norm": ("triton", "cuda")})
    monkeypatch.setattr(_backend, "available_backends", lambda dev=None: ["reference", "cuda", "triton"])
    assert _backend._choose("attention", "cuda", None, torch.float32) == "triton"
    assert _backend._choose("attention", "cuda", None, torch.bfloat16) == "cuda"
    assert _backend._choose("attention", "cuda", None) == "cuda"
    assert _backend._choose("spatin_norm", "cuda", None, torch.float32) == "triton"
    monkeypatch.setattr(_backend, "available_backends", lambda dev=None: ["reference", "cuda"])
    assert _backend._choose("attention", "cuda", None, torch.float32) == "cuda"
    assert _backend._choose("spatin_norm", "cuda", None, torch.float32) == "cuda"


def test_float32_attention_on_cuda_takes_the_reference(monkeypatch):
    """The measured choice (benchmarks/results/h100.md): the fused float32 attention kernels
    take 1.4-8x the reference's device time; every other op and dtype runs CUDA first."""
    monkeypatch.setattr(_backend, "available_backends", lambda dev=None: ["reference", "cuda", "triton"])
    assert _backend._choose("attention", "cuda", None, torch.float32) == "reference"
    for dtype in (torch.bfloat16, torch.float16):
        assert _backend._choose("attention", "cuda", None, dtype) == "cuda"
    for op in ("spatin_norm", "reverse_step"):
        assert _backend._choose(op, "cuda", None, torch.float32) == "cuda"


def test_each_op_resolves_with_its_input_dtype(monkeypatch):
    seen = []
    resolve = _backend.resolve
    monkeypatch.setattr(_backend, "resolve", lambda op, device, backend, dtype=None: (
        seen.append((op, dtype)), resolve(op, device, backend, dtype))[1])
    x = torch.randn(2, 4, 3, 3, dtype=torch.bfloat16)
    mcvd.ops.spatin_norm(x, 2, backend="reference")
    mcvd.ops.attention(*torch.randn(3, 1, 2, 5, 4, dtype=torch.float64), backend="reference")
    mcvd.ops.reverse_step(x, x, None, a=1.0, b=1.0, c_x0=1.0, c_xt=0.0, sigma=0.0, backend="reference")
    assert seen == [("spatin_norm", torch.bfloat16), ("attention", torch.float64), ("reverse_step", torch.bfloat16)]


def test_cached_choice_is_per_dtype(monkeypatch):
    monkeypatch.delenv("MCVD_BACKEND", raising=False)
    monkeypatch.setattr(_backend, "_resolved", {})
    monkeypatch.setattr(_backend, "_choose", lambda op, dev, backend, dtype=None: str(dtype))
    cpu = torch.device("cpu")
    assert _backend.resolve("attention", cpu, None, torch.float32) == "torch.float32"
    assert _backend.resolve("attention", cpu, None, torch.bfloat16) == "torch.bfloat16"


def test_importing_mcvd_does_not_import_triton():
    import subprocess
    import sys

    code = "import sys, torch, mcvd; mcvd.ops.spatin_norm(torch.randn(1, 2, 3, 3), 1, backend='reference'); " \
           "print('triton' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_meta_tensors_run_through_the_reference():
    """Meta tensors (shapes without data) take the pure-PyTorch reference: every
    op gives outputs of the right shape and dtype, after the same checks."""
    meta = torch.device("meta")
    x = torch.empty(2, 6, 4, 5, device=meta)
    y = mcvd.ops.spatin_norm(x, 3, scale=torch.empty(2, 6, device=meta), silu=True)
    assert (y.device, y.shape, y.dtype) == (meta, x.shape, x.dtype)
    q = torch.empty(2, 3, 5, 4, device=meta, dtype=torch.float16)
    out = mcvd.ops.attention(q, q, q)
    assert (out.device, out.shape, out.dtype) == (meta, q.shape, q.dtype)
    x_t = torch.empty(2, 3, 4, device=meta)
    x_prev, x0 = mcvd.ops.reverse_step(x_t, x_t, x_t, a=0.5, b=0.8, c_x0=0.3, c_xt=0.6, sigma=0.1, clip=(-1, 1))
    assert x_prev.device == x0.device == meta and x_prev.shape == x0.shape == x_t.shape
    with pytest.raises(ValueError, match=r"num_groups: expected a positive divisor of the 6 channels of x, got 4"):
        mcvd.ops.spatin_norm(x, 4)
    with pytest.raises(RuntimeError, match=r"backend: 'cpu' is not available for attention on meta tensors; "
                                           r"available here: \['reference'"):
        mcvd.ops.attention(q, q, q, backend="cpu")
