"""MCVD.condition: what depends only on the condition frames, computed once.

SPATIN: the cached forward runs the same convolutions on the same inputs as
the uncached one, so it must agree bit for bit. Concat: conv_in split into
its x and cond parts sums the same products in another order; the bound on
that is derived below.
"""
import copy
import dataclasses
import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from mcvd import MCVD, ModelConfig
from mcvd.nn.blocks import Norm
from mcvd.nn.condition import ConditionCache

TINY = ModelConfig(image_size=16, channels=2, num_frames=2, num_frames_cond=2, num_frames_future=1, ngf=8,
                   ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), n_head_channels=8, dropout=0.0,
                   spade_dim=8, num_timesteps=50)

MASKS = {
    "none": None,
    "mixed": torch.tensor([[True, True], [True, False], [False, True], [False, False]]),
    "guidance": torch.tensor([[True, False], [True, False], [False, False], [False, False]]),  # cond, then masked half
}


def tiny(**changes) -> ModelConfig:
    return dataclasses.replace(TINY, **changes)


def randomized(model: MCVD) -> MCVD:
    """Random weights everywhere (the DDPM init zeroes each residual branch's last layer)."""
    with torch.no_grad():
        for p in model.parameters():
            fan_in = p[0].numel() if p.dim() > 1 else 1
            p.normal_(0.0, 1.0 / math.sqrt(fan_in) if p.dim() > 1 else 0.3)
    return model.eval()


def inputs(cfg: ModelConfig, B: int, dtype=torch.float32):
    S, C = cfg.image_size, cfg.channels
    x = torch.randn(B, cfg.num_frames, C, S, S, dtype=dtype)
    cond = torch.rand(B, cfg.num_cond_frames, C, S, S, dtype=dtype) * 2 - 1
    t = torch.randint(0, cfg.num_timesteps, (B,))
    return x, t, cond


def test_spatin_layers_are_every_spatin_norm_at_its_size():
    """condition() computes each layer's maps at the size the layer normalises
    in forward: check the static list against a forward pass."""
    cfg = tiny(conditioning="spatin", ch_mult=(1, 2, 2), num_res_blocks=2, image_size=16)
    model = MCVD(cfg).eval()
    seen = []
    hooks = [m.register_forward_pre_hook(lambda m, args: seen.append((m, args[0].shape[-1])))
             for m in model.modules() if isinstance(m, Norm) and m.spatin is not None]
    x, t, cond = inputs(cfg, B=1)
    with torch.no_grad():
        model(x, t, cond)
    for h in hooks:
        h.remove()
    assert seen == model._spatin_layers()
    assert len(seen) == len(hooks) == 2 * (8 + 2 + 11) + 1  # two per ResBlock (down, middle, up), norm_out


@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("cond_emb", [False, True])
@pytest.mark.parametrize("kpf", [(2, 2, 1), (1, 1, 0), (3, 0, 2)])
def test_spatin_cache_is_exact(kpf, cond_emb, mask):
    k, p, f = kpf
    cfg = tiny(conditioning="spatin", num_frames=k, num_frames_cond=p, num_frames_future=f, cond_emb=cond_emb)
    model = randomized(MCVD(cfg))
    x, t, cond = inputs(cfg, B=4)
    cond_mask = MASKS[mask]
    with torch.no_grad():
        cache = model.condition(cond, cond_mask)
        ref = model(x, t, cond, cond_mask)
        out = model(x, t, cache=cache)
        out_stacked = model(x.flatten(1, 2), t, cache=model.condition(cond.flatten(1, 2), cond_mask))
    assert torch.equal(out, ref)
    assert torch.equal(out_stacked, ref.flatten(1, 2))
    assert cache.conv_in_cond is None and len(cache.spatin) == len(model._spatin_layers())
    assert (cache.mask_embed is not None) == cond_emb


def test_spatin_cache_serves_many_steps_exactly():
    cfg = tiny(conditioning="spatin", cond_emb=True)
    model = randomized(MCVD(cfg))
    _, _, cond = inputs(cfg, B=2)
    mask = torch.tensor([[True, False], [False, True]])
    with torch.no_grad():
        cache = model.condition(cond, mask)
        for step in range(3):
            x, t, _ = inputs(cfg, B=2)
            assert torch.equal(model(x, t, cache=cache), model(x, t, cond, mask)), step


def unit_roundoff(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps / 2


def test_concat_conv_in_split_within_the_summation_bound():
    """conv(cat[x, cond], W) + b against conv(x, W_x) + b + conv(cond, W_c):
    both are float sums of the same n + 1 terms (n = (k+p+f)*C*9 products and
    the bias) in different orders. Any order's result is within
    gamma_{n+1} * sum |terms| of the exact sum (Higham, Accuracy and
    Stability, eq. 3.5; gamma_m = m u / (1 - m u)), so the two are within
    twice that of each other, elementwise."""
    cfg = tiny(conditioning="concat", num_frames=3, num_frames_cond=2, num_frames_future=1)
    model = randomized(MCVD(cfg))
    x, _, cond = inputs(cfg, B=3)
    x, cond = x.flatten(1, 2), cond.flatten(1, 2)
    conv = model.conv_in
    with torch.no_grad():
        joint = conv(torch.cat([x, cond], dim=1))
        split = model._conv_in_part(x, 0) + model._conv_in_part(cond, x.shape[1])
        magnitude = torch.nn.functional.conv2d(torch.cat([x, cond], dim=1).abs(), conv.weight.abs(),
                                               conv.bias.abs(), padding=conv.padding)
    n = conv.weight[0].numel() + 1
    u = unit_roundoff(torch.float32)
    gamma = n * u / (1 - n * u)
    diff = (joint - split).abs()
    assert (diff <= 2 * gamma * magnitude).all()
    assert diff.max() > 0 or torch.equal(joint, split)  # (the orders may happen to agree)


@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("cond_emb", [False, True])
def test_concat_cache_within_float32_error(cond_emb, mask, assert_within_eager_error):
    """The whole network: the split conv_in only reorders one layer's sums, so
    the cached float32 network is as close to the float64 network as the
    uncached float32 one (the flash-attention criterion: within 2x its
    error); observed differences are a few ulps of the output."""
    cfg = tiny(conditioning="concat", cond_emb=cond_emb)
    model = randomized(MCVD(cfg))
    model64 = copy.deepcopy(model).double()
    x, t, cond = inputs(cfg, B=4)
    cond_mask = MASKS[mask]
    with torch.no_grad():
        ref = model64(x.double(), t, cond.double(), cond_mask)
        eager = model(x, t, cond, cond_mask)
        out = model(x, t, cache=model.condition(cond, cond_mask))
        out64 = model64(x.double(), t, cache=model64.condition(cond.double(), cond_mask))
    assert_within_eager_error(out, ref, eager, factor=2.0, atol=0.0)
    # float64: the same reordering, 2^29 times smaller rounding.
    torch.testing.assert_close(out64, ref, rtol=1e-12, atol=1e-12)
    rel = ((out - eager).norm() / eager.norm()).item()
    assert rel < 1e-6  # float32 unit roundoff is 6e-8


@pytest.mark.parametrize("conditioning", ["concat", "spatin"])
def test_cached_step_skips_exactly_the_condition_flops(conditioning):
    """A cached forward plus condition() does the uncached forward's FLOPs: no
    work is added, and the condition work leaves the per-step call."""
    cfg = tiny(conditioning=conditioning)
    model = randomized(MCVD(cfg))
    x, t, cond = inputs(cfg, B=2)

    def flops(fn):
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            fn()
        return counter.get_total_flops()

    cache = model.condition(cond)
    uncached = flops(lambda: model(x, t, cond))
    cached = flops(lambda: model(x, t, cache=cache))
    build = flops(lambda: model.condition(cond))
    assert cached + build == uncached
    assert build > (0.5 * uncached if conditioning == "spatin" else 0)


def test_training_gradients_do_not_depend_on_the_cache():
    """Training calls forward with cond: the SPATIN convs get their gradient
    through the normal path, untouched by the cache code."""
    cfg = tiny(conditioning="spatin")
    model = randomized(MCVD(cfg)).train()
    x, t, cond = inputs(cfg, B=2)
    model(x, t, cond).square().mean().backward()
    spatin_grads = [p.grad for m in model.modules() if isinstance(m, Norm) and m.spatin is not None
                    for p in m.spatin.parameters()]
    assert spatin_grads and all(g is not None and g.abs().max() > 0 for g in spatin_grads)


# --- misuse -----------------------------------------------------------------

def test_cache_for_other_frames_is_refused():
    cfg = tiny(conditioning="spatin")
    model = randomized(MCVD(cfg))
    x, t, cond = inputs(cfg, B=2)
    cache = model.condition(cond)
    with pytest.raises(ValueError, match=r"cache: built for batch 2, torch.float32 on cpu; x_t has batch 1, "
                                         r"torch.float32 on cpu\. Build one"):
        model(x[:1], t[:1], cache=cache)
    with pytest.raises(ValueError, match=r"cache: built for batch 2, torch.float32 on meta; x_t has batch 2, "
                                         r"torch.float32 on cpu"):
        model(x, t, cache=dataclasses.replace(cache, device=torch.device("meta")))
    model.double()  # the weights change dtype (and version)
    with pytest.raises(ValueError, match=r"cache: built for batch 2, torch.float32 on cpu; x_t has batch 2, "
                                         r"torch.float64 on cpu"):
        model(x.double(), t, cache=cache)


def test_cache_with_cond_or_of_another_kind_is_refused():
    cfg = tiny(conditioning="concat")
    model = randomized(MCVD(cfg))
    x, t, cond = inputs(cfg, B=2)
    cache = model.condition(cond)
    with pytest.raises(ValueError, match=r"cond, cond_mask: expected None with cache="):
        model(x, t, cond, cache=cache)
    with pytest.raises(ValueError, match=r"cond, cond_mask: expected None with cache="):
        model(x, t, cond_mask=torch.ones(2, 2, dtype=torch.bool), cache=cache)
    with pytest.raises(TypeError, match=r"cache: expected a ConditionCache from model.condition\(\), got dict"):
        model(x, t, cache={})
    other = randomized(MCVD(cfg))
    with pytest.raises(ValueError, match=r"cache: built by another network"):
        other(x, t, cache=cache)
    assert isinstance(cache, ConditionCache) and "model=" not in repr(cache)


@pytest.mark.parametrize("change", ["optimizer step", "load_state_dict"])
def test_cache_of_changed_weights_is_refused(change):
    cfg = tiny(conditioning="spatin", cond_emb=True)
    model = randomized(MCVD(cfg))
    x, t, cond = inputs(cfg, B=2)
    cache = model.condition(cond)
    if change == "optimizer step":
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        model(x, t, cond).square().mean().backward()
        opt.step()
        model.eval()
    else:
        model.load_state_dict(randomized(MCVD(cfg)).state_dict())
    with pytest.raises(ValueError, match=r"cache: the network's weights changed since it was built"):
        model(x, t, cache=cache)
    with torch.no_grad():  # a fresh cache serves again
        assert torch.equal(model(x, t, cache=model.condition(cond)), model(x, t, cond))


def test_condition_checks_its_inputs():
    cfg = tiny(conditioning="spatin")
    model = MCVD(cfg)
    _, _, cond = inputs(cfg, B=2)
    with pytest.raises(ValueError, match=r"cond: expected the 2 past and 1 future frames; got None"):
        model.condition(None)
    with pytest.raises(ValueError, match=r"cond: expected \[B, 3, 2, 16, 16\] or stacked \[B, 6, 16, 16\]"):
        model.condition(cond[:, :2])
    with pytest.raises(TypeError, match=r"cond: expected dtype torch.float32 \(the model's\), got torch.float64"):
        model.condition(cond.double())
    with pytest.raises(ValueError, match=r"cond_mask: expected shape \[2, 2\]"):
        model.condition(cond, torch.ones(3, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"cond_mask: expected device cpu \(the device of cond\), got meta"):
        model.condition(cond, torch.ones(2, 2, dtype=torch.bool, device="meta"))
    with pytest.raises(ValueError, match=r"cond: this model has no condition frames .* nothing to cache"):
        MCVD(tiny(num_frames_cond=0, num_frames_future=0)).condition(cond)


def test_compiled_network_reads_the_cache():
    """torch.compile traces the cached forward whole (the cache's maps are a dict keyed by module)."""
    cfg = tiny(conditioning="spatin", cond_emb=True)
    model = randomized(MCVD(cfg))
    x, t, cond = inputs(cfg, B=2)
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    with torch.no_grad():
        cache = model.condition(cond)
        torch.testing.assert_close(compiled(x, t, cache=cache), model(x, t, cache=cache), rtol=0, atol=0)
