"""mcvd.nn.precision: whether this CPU runs convolutions fast in bfloat16/float16, and the warning when not."""
import warnings

import pytest
import torch

import mcvd
from mcvd.nn import MCVD, ModelConfig, precision


def _runs_slow_conv(dtype) -> bool:
    """Whether ATen sends a convolution in `dtype` to its im2col fallback on this machine."""
    x, w = torch.randn(2, 8, 8, 8, dtype=dtype), torch.randn(8, 8, 3, 3, dtype=dtype)
    with torch.profiler.profile() as prof:
        torch.nn.functional.conv2d(x, w, padding=1)
    return any("slow_conv2d" in e.key for e in prof.key_averages())


def test_the_check_agrees_with_what_aten_runs():
    """The premise: where the check says no, a bfloat16 convolution lands on ATen's slow path; where it says
    yes, on oneDNN."""
    assert precision.cpu_has_fast_convolutions(torch.float32)
    assert _runs_slow_conv(torch.bfloat16) == (not precision.cpu_has_fast_convolutions(torch.bfloat16))


@pytest.mark.parametrize("fast", [True, False])
def test_warns_only_on_a_cpu_without_the_kernels(monkeypatch, fast):
    monkeypatch.setattr(precision, "cpu_has_fast_convolutions", lambda dtype: fast)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        precision.warn_if_slow_on_cpu(torch.device("cpu"), torch.bfloat16, "--the-setting")
        precision.warn_if_slow_on_cpu(torch.device("cuda"), torch.bfloat16, "--the-setting")  # never on a GPU
    assert len(caught) == (0 if fast else 1)
    if not fast:
        assert caught[0].category is UserWarning
        message = str(caught[0].message)
        assert message.startswith("--the-setting: this CPU") and "bfloat16" in message and "float32" in message


def test_optimize_warns_for_bfloat16_on_such_a_cpu(monkeypatch):
    """mcvd.optimize warns before it compiles anything (the warning is raised, as an error here)."""
    monkeypatch.setattr(precision, "cpu_has_fast_convolutions", lambda dtype: dtype == torch.float32)
    model = MCVD(ModelConfig(image_size=8, channels=1, num_frames=1, num_frames_cond=1, ngf=4, ch_mult=(1,),
                             num_res_blocks=1, attn_resolutions=(), n_head_channels=-1))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        with pytest.raises(UserWarning, match=r"mcvd.optimize\(dtype=torch.bfloat16\): this CPU"):
            mcvd.optimize(model, dtype=torch.bfloat16)
