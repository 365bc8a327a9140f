"""The MCVD network on tiny configs: shapes, input forms, masking, errors, gradients."""
import dataclasses
import math

import pytest
import torch

from mcvd import MCVD, ModelConfig

TINY = ModelConfig(image_size=16, channels=2, num_frames=2, num_frames_cond=1, num_frames_future=0, ngf=8,
                   ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), n_head_channels=8, dropout=0.0,
                   spade_dim=8, num_timesteps=50)


def tiny(**changes) -> ModelConfig:
    return dataclasses.replace(TINY, **changes)


def randomized(model: MCVD) -> MCVD:
    """Random weights everywhere: the DDPM init zeroes every residual branch's
    last layer (and the output conv), which would hide most of the network."""
    with torch.no_grad():
        for p in model.parameters():
            fan_in = p[0].numel() if p.dim() > 1 else 1
            p.normal_(0.0, 1.0 / math.sqrt(fan_in) if p.dim() > 1 else 0.3)
    return model.eval()


def inputs(cfg: ModelConfig, B: int = 3, dtype=torch.float32):
    S, C = cfg.image_size, cfg.channels
    x = torch.randn(B, cfg.num_frames, C, S, S, dtype=dtype)
    # Condition frames are data, in [-1, 1]; x_t is noisy data, unbounded.
    cond = torch.rand(B, cfg.num_cond_frames, C, S, S, dtype=dtype) * 2 - 1 if cfg.num_cond_frames else None
    t = torch.randint(0, cfg.num_timesteps, (B,))
    return x, t, cond


FRAMES = [(2, 1, 0), (1, 2, 1), (3, 0, 2)]  # (k, p, f)
CASES = [("concat", 1, 0, 0)] + [(c, *kpf) for c in ("concat", "spatin") for kpf in FRAMES]


@pytest.mark.parametrize("conditioning, k, p, f", CASES)
def test_output_shape_and_both_input_forms(conditioning, k, p, f):
    cfg = tiny(num_frames=k, num_frames_cond=p, num_frames_future=f, conditioning=conditioning)
    model = randomized(MCVD(cfg))
    x, t, cond = inputs(cfg)
    with torch.no_grad():
        out5 = model(x, t, cond)
        out4 = model(x.flatten(1, 2), t, None if cond is None else cond.flatten(1, 2))
    assert out5.shape == x.shape
    assert out4.shape == (3, k * cfg.channels, cfg.image_size, cfg.image_size)
    torch.testing.assert_close(out4, out5.flatten(1, 2), rtol=0, atol=0)
    assert out5.abs().mean() > 1e-3  # not collapsed to zeros


@pytest.mark.parametrize("conditioning", ["concat", "spatin"])
@pytest.mark.parametrize("cond_emb", [False, True])
def test_cond_mask_equals_passing_zeros(conditioning, cond_emb):
    cfg = tiny(num_frames_cond=2, num_frames_future=1, conditioning=conditioning, cond_emb=cond_emb)
    model = randomized(MCVD(cfg))
    x, t, cond = inputs(cfg, B=4)
    mask = torch.tensor([[True, True], [True, False], [False, True], [False, False]])
    zeroed = cond.clone()
    zeroed[~mask[:, 0], :2] = 0  # past frames of samples without past
    zeroed[~mask[:, 1], 2:] = 0  # future frames of samples without future
    with torch.no_grad():
        masked = model(x, t, cond, mask)
        by_hand = model(x, t, zeroed, mask)
        unmasked = model(x, t, cond, torch.ones(4, 2, dtype=torch.bool))
        default = model(x, t, cond)
    torch.testing.assert_close(masked, by_hand, rtol=0, atol=0)
    torch.testing.assert_close(unmasked, default, rtol=0, atol=0)  # None means "all given"
    assert torch.equal(masked[0], unmasked[0])
    for i in (1, 2, 3):  # masking changes the output of the masked samples
        assert (masked[i] - unmasked[i]).abs().max() > 1e-3
    if not cond_emb:
        with torch.no_grad():
            torch.testing.assert_close(model(x, t, zeroed), masked, rtol=0, atol=0)


def test_mask_embedding_reads_the_past_column():
    cfg = tiny(cond_emb=True)
    model = randomized(MCVD(cfg))
    x, t, cond = inputs(cfg, B=2)
    zeros = torch.zeros_like(cond)
    with torch.no_grad():
        # Same (zero) frames, different mask: only the embedding differs.
        given = model(x, t, zeros, torch.tensor([[True, True]] * 2))
        masked = model(x, t, zeros, torch.tensor([[False, True]] * 2))
        future_only = model(x, t, zeros, torch.tensor([[True, False]] * 2))
    assert (given - masked).abs().max() > 1e-3
    torch.testing.assert_close(given, future_only, rtol=0, atol=0)  # f = 0: column 1 has no frames


def test_time_changes_the_output():
    model = randomized(MCVD(TINY))
    x, _, cond = inputs(TINY, B=2)
    with torch.no_grad():
        a = model(x, torch.tensor([0, 0]), cond)
        b = model(x, torch.tensor([49, 49]), cond)
    assert (a - b).abs().max() > 1e-3


def test_float64_agrees_with_float32():
    """The float32 network against the same weights in float64: error of float32 rounding only."""
    cfg = tiny(conditioning="spatin", num_frames_future=1)
    model = randomized(MCVD(cfg))
    x, t, cond = inputs(cfg)
    with torch.no_grad():
        out32 = model(x, t, cond)
        out64 = model.double()(x.double(), t, cond.double())
    err = (out32.double() - out64).norm() / out64.norm()
    assert err < 1e-5


@pytest.mark.parametrize("conditioning", ["concat", "spatin"])
def test_gradients_reach_every_parameter(conditioning, backend):
    cfg = tiny(num_frames_cond=1, num_frames_future=1, conditioning=conditioning, cond_emb=True)
    model = randomized(MCVD(cfg, backend=backend)).train()
    x, t, cond = inputs(cfg, B=2)
    x.requires_grad_(True)
    mask = torch.tensor([[True, False], [False, True]])
    model(x, t, cond, mask).square().mean().backward()
    assert x.grad is not None and x.grad.abs().max() > 0
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().max() > 0, name


def test_backward_matches_the_reference_backend(backend):
    if backend == "reference":
        pytest.skip("compares the other backends with the reference")
    cfg = tiny(conditioning="spatin", num_frames_future=1)
    model = randomized(MCVD(cfg))
    x, t, cond = inputs(cfg, B=2)
    grads = {}
    for b in ("reference", backend):
        model.set_backend(b).zero_grad()
        out = model(x, t, cond)
        out.square().sum().backward()
        grads[b] = [out.detach()] + [p.grad.clone() for p in model.parameters()]
    # float32 kernels that sum in another order: relative error of a few ulps
    # per op, grown by the depth of the network; 1e-4 leaves a 100x margin
    # over the 1e-6 seen between float32 and float64.
    for g, r in zip(grads[backend], grads["reference"]):
        assert (g - r).norm() <= 1e-4 * r.norm()


# --- bad input --------------------------------------------------------------

def test_bad_inputs_are_named():
    cfg = tiny(num_frames_cond=1)
    model = MCVD(cfg)
    x, t, cond = inputs(cfg, B=2)
    for set_it in (lambda: MCVD(cfg, backend="gpu"), lambda: model.set_backend("gpu")):  # named when set
        with pytest.raises(ValueError, match=r"backend: expected one of \('reference', 'cpu', 'cuda', 'triton'\) "
                                             r"or None, got 'gpu'"):
            set_it()
    with pytest.raises(ValueError, match=r"x_t: expected device cpu \(the model's\), got meta"):
        model(x.to("meta"), t.to("meta"), cond.to("meta"))
    with pytest.raises(ValueError, match=r"x_t: expected \[B, 2, 2, 16, 16\] or stacked \[B, 4, 16, 16\], "
                                         r"got shape \[2, 3, 2, 16, 16\]"):
        model(torch.randn(2, 3, 2, 16, 16), t, cond)
    with pytest.raises(ValueError, match=r"x_t: expected .* got shape \[2, 4, 15, 16\]"):
        model(torch.randn(2, 4, 15, 16), t, cond)
    with pytest.raises(TypeError, match=r"x_t: expected dtype torch.float32 \(the model's\), got torch.float64"):
        model(x.double(), t, cond.double())
    with pytest.raises(ValueError, match=r"cond: expected the 1 past and 0 future frames; got None"):
        model(x, t)
    with pytest.raises(ValueError, match=r"cond: expected \[B, 1, 2, 16, 16\] or stacked \[B, 2, 16, 16\]"):
        model(x, t, torch.randn(2, 2, 2, 16, 16))
    with pytest.raises(ValueError, match=r"cond: expected batch 2, dtype torch.float32 .* got batch 1"):
        model(x, t, cond[:1])
    with pytest.raises(TypeError, match=r"t: expected an int64 \(or int32\) tensor \[B\] of DDPM steps, got "
                                        r"torch.float32"):
        model(x, t.float(), cond)
    for small in (torch.uint8, torch.int8, torch.int16):  # T - 1 - t would wrap, or t index as a mask
        with pytest.raises(TypeError, match=rf"t: expected an int64 .* got {small}"):
            model(x, t.to(small), cond)
    torch.testing.assert_close(model(x, t.int(), cond), model(x, t, cond), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"t: expected shape \[2\] \(one step per sample\), got \[\]"):
        model(x, torch.tensor(3), cond)
    with pytest.raises(ValueError, match=r"t: expected DDPM steps in \[0, 49\], got values in \[0, 50\]"):
        model(x, torch.tensor([0, 50]), cond)
    with pytest.raises(TypeError, match=r"cond_mask: expected a bool tensor \[B, 2\] .* got torch.int64"):
        model(x, t, cond, torch.ones(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"cond_mask: expected shape \[2, 2\] \(past given, future given\), "
                                         r"got \[2\]"):
        model(x, t, cond, torch.ones(2, dtype=torch.bool))


@pytest.mark.parametrize("scaled, shown", [
    (lambda c: (c + 1) * 127.5, r"values in \[0, 255\]"),  # 8-bit levels
    (lambda c: c * 100, r"values in \[-100, 100\]"),
    (lambda c: c * (1 + 2e-3), r"values in \[-1.002, 1.002\]"),  # beyond the rounding margin
    (lambda c: torch.where(c > 0.5, float("nan"), c), r"\d+ NaN values"),
], ids=["8-bit", "x100", "margin", "NaN"])
def test_condition_frames_outside_the_data_range_are_refused(scaled, shown):
    """cond is data, in [-1, 1]; frames scaled otherwise are refused (on the
    CPU: reading a GPU tensor's values would make the host wait). x_t is noisy
    data, so it has no range to check."""
    cfg = tiny(num_frames_cond=1, num_frames_future=1)
    model = MCVD(cfg)
    x, t, cond = inputs(cfg, B=2)
    cond[0, 0, 0, 0, 0], cond[1, 1, 1, 1, 1] = -1.0, 1.0
    with pytest.raises(ValueError, match=r"cond: expected frames in \[-1, 1\] \(up to 0.001 beyond, float rounding\), "
                                         r"got " + shown):
        model(x, t, scaled(cond))
    with torch.no_grad():
        model(x * 1000, t, cond * (1 + 5e-4))  # within the rounding margin


def test_masked_condition_frames_are_not_range_checked():
    """Masked frames are replaced by zeros before the check: whatever they hold is not used."""
    cfg = tiny(num_frames_cond=1, num_frames_future=1)
    model = randomized(MCVD(cfg))
    x, t, cond = inputs(cfg, B=2)
    mask = torch.tensor([[True, False], [False, True]])
    junk = cond.clone()
    junk[0, 1], junk[1, 0] = 255.0, float("nan")
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, junk, mask), model(x, t, cond, mask), rtol=0, atol=0)


def test_an_empty_batch_is_refused():
    model = MCVD(TINY)
    x, t, cond = inputs(TINY, B=2)
    with pytest.raises(ValueError, match=r"x_t: expected at least one sample \(B >= 1\), got shape "
                                         r"\[0, 2, 2, 16, 16\]"):
        model(x[:0], t[:0], cond[:0])


def test_unconditional_model_rejects_cond():
    cfg = tiny(num_frames_cond=0)
    model = MCVD(cfg)
    x, t, _ = inputs(cfg, B=2)
    assert model(x, t).shape == x.shape
    with pytest.raises(ValueError, match=r"cond: this model has no condition frames .* expected None"):
        model(x, t, torch.randn(2, 1, 2, 16, 16))


def test_config_must_be_a_model_config():
    with pytest.raises(TypeError, match=r"config: expected a mcvd.ModelConfig, got dict"):
        MCVD(TINY.to_dict())


def test_meta_tensors_give_the_output_shape():
    """On the meta device (shapes without data) every op takes its reference, as
    the ops do for meta tensors; the range checks read no values there."""
    model = MCVD(tiny(conditioning="spatin", num_frames_future=1)).to("meta")
    x, t, cond = (v.to("meta") for v in inputs(model.config, B=2))
    eps = model(x, t, cond, torch.ones(2, 2, dtype=torch.bool, device="meta"))
    assert eps.device.type == "meta" and eps.shape == x.shape
