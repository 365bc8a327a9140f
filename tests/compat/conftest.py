import pytest
import torch

import mcvd


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _has_kernels(backend: str) -> bool:
    """False while a compiled backend is registered but its CPU kernels are not built yet."""
    x = torch.randn(1, 4, 2, 2)
    q = torch.randn(1, 1, 4, 2)
    try:
        mcvd.ops.spatin_norm(x, 2, backend=backend)
        mcvd.ops.attention(q, q, q, backend=backend)
    except NotImplementedError as e:
        if "Could not run 'mcvd::" in str(e):
            return False
        raise
    return True


@pytest.fixture(params=mcvd.ops.available_backends("cpu"))
def backend(request):
    """Every op backend this install runs on CPU tensors."""
    if not _has_kernels(request.param):
        pytest.skip(f"the {request.param!r} backend has no kernels in this build")
    return request.param
