"""The eager network the demo and `mcvd stream` sample with on the CPU: the model in channels_last, the same
function; --no-optimize leaves the model exactly as it is."""
import copy

import torch

from mcvd import pretrained
from mcvd.cli._common import inference_model


def _call(model, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    shape = (3, cfg.num_frames, cfg.channels, cfg.image_size, cfg.image_size)
    x_t = torch.randn(shape, generator=g)
    cond = torch.rand((3, cfg.num_frames_cond, cfg.channels, cfg.image_size, cfg.image_size), generator=g) * 2 - 1
    with torch.no_grad():
        return model(x_t, torch.tensor([10, 400, 990]), cond=cond)


def test_channels_last_is_the_same_function_on_the_shipped_model():
    model, _ = pretrained.load("smmnist-demo-cpu")  # trained weights: every residual branch does something
    model.eval()
    plain = copy.deepcopy(model)
    expected = _call(plain)

    kept = inference_model(plain, True)
    assert kept is plain
    assert all(p.is_contiguous() for p in kept.parameters())
    assert torch.equal(_call(kept), expected)

    fast = inference_model(model, True, channels_last=True)
    assert fast is model
    convs = [m.weight for m in fast.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
                         for w in convs if w.shape[2:] != (1, 1))
    got = _call(fast)
    assert got.shape == expected.shape
    assert ((got - expected).norm() / expected.norm()).item() < 1e-5
