"""Classifier-free guidance in a limited interval (SamplerConfig.guidance_interval):
only the steps with lo <= t <= hi run the guided (doubled) call, the others the
conditional network alone; the samples equal a hand-written guided loop."""
import math

import pytest
import torch
from diffusion_toys import OracleModel, labelled_video, toy_config

import mcvd
from mcvd.diffusion import SamplerConfig

T = 100


def tiny_mcvd(conditioning: str) -> mcvd.MCVD:
    cfg = mcvd.ModelConfig(image_size=8, channels=1, num_frames=2, num_frames_cond=2, ngf=8, ch_mult=(1, 2),
                           num_res_blocks=1, attn_resolutions=(4,), n_head_channels=8, dropout=0.0,
                           conditioning=conditioning, spade_dim=8, num_timesteps=T)
    model = mcvd.MCVD(cfg)
    with torch.no_grad():  # random weights everywhere, so that the masked call differs from the conditional one
        for p in model.parameters():
            p.normal_(0.0, 1.0 / math.sqrt(p[0].numel()) if p.dim() > 1 else 0.3)
    return model.eval()


@pytest.mark.parametrize("interval", [(0, 600), (500, 999), (250, 250), (0, 999)])
def test_only_the_steps_in_the_interval_are_guided(interval):
    model = OracleModel(toy_config(k=2, p=2, channels=2, size=5))
    B = 3
    past = labelled_video(0.1 * torch.arange(2.0) + 0.2 * torch.arange(B)[:, None])
    mcvd.predict(model, past, 4, guidance=2.0, guidance_interval=interval, method="ddim", steps=4)
    assert len(model.calls) == 8  # 2 blocks of 4 steps: one call per step, guided or not
    lo, hi = interval
    for t, cond, cond_mask in model.calls:
        step = int(t[0])
        assert (t == step).all()
        if lo <= step <= hi:  # the conditional half, then the masked half, in one call
            assert cond_mask.tolist() == [[True, False]] * B + [[False, False]] * B
            torch.testing.assert_close(cond[B:], cond[:B])  # the same frames, masked by cond_mask
        else:
            assert cond_mask.tolist() == [[True, False]] * B
    steps = [int(t[0]) for t, _, _ in model.calls[:4]]
    assert steps == sorted(steps, reverse=True) and len(set(steps)) == 4


def reference_block(model, past, *, method, steps, w, interval, seed):
    """One guided block written out from the scheduler's steps, independent of BlockSampler:
    eps = eps_u + w (eps_c - eps_u) where lo <= t <= hi, else eps_c."""
    g = torch.Generator().manual_seed(seed)
    B = past.shape[0]
    scheduler = SamplerConfig(method=method, steps=steps).make_scheduler(model)
    x = torch.randn(B, 2, 1, 8, 8, generator=g)
    given, masked = torch.tensor([[True, False]] * B), torch.zeros(B, 2, dtype=torch.bool)
    with torch.no_grad():
        for t in scheduler.timesteps.tolist():
            tt = torch.full((B,), t, dtype=torch.long)
            eps = model(x, tt, past, cond_mask=given)
            if interval[0] <= t <= interval[1]:
                eps_u = model(x, tt, past, cond_mask=masked)
                eps = eps_u + w * (eps - eps_u)
            x, _ = scheduler.step(eps, t, x, generator=g)
    return x


@pytest.mark.parametrize("conditioning", ["concat", "spatin"])
@pytest.mark.parametrize("method", ["ddim", "ddpm"])
@pytest.mark.parametrize("interval", [(0, 60), (40, 99), (0, 99), (100, 200)])
def test_samples_equal_a_hand_written_guided_loop(conditioning, method, interval):
    model = tiny_mcvd(conditioning)
    past = torch.rand(2, 2, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    got = mcvd.predict(model, past, 2, method=method, steps=5, guidance=3.0, guidance_interval=interval,
                       generator=torch.Generator().manual_seed(7))
    expected = reference_block(model, past, method=method, steps=5, w=3.0, interval=interval, seed=7)
    torch.testing.assert_close(got, expected, rtol=0, atol=2e-5)


def test_the_limits_are_plain_guidance_and_no_guidance_exactly():
    """An interval over every step samples as guidance without one; an interval over no
    step samples as the conditional network alone, bit for bit."""
    model = tiny_mcvd("concat")
    past = torch.rand(2, 2, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1

    def run(**kw):
        return mcvd.predict(model, past, 4, method="ddpm", steps=4, generator=torch.Generator().manual_seed(3), **kw)
    guided, plain = run(guidance=2.0), run()
    assert not torch.equal(guided, plain)
    torch.testing.assert_close(run(guidance=2.0, guidance_interval=(0, T - 1)), guided, rtol=0, atol=0)
    torch.testing.assert_close(run(guidance=2.0, guidance_interval=(T, 2 * T)), plain, rtol=0, atol=0)


def test_the_shipped_model_records_its_interval():
    from mcvd import pretrained

    entry = pretrained.MODELS["smmnist-demo-cpu"]
    assert entry.guidance == 2.0 and entry.guidance_interval == (0, 700)
    # 20 trailing DDPM steps over T = 1000 visit t = 999, 949, ..., 49: the 14 steps at t <= 699 are guided.
    config = SamplerConfig(method="ddpm", steps=entry.sample_steps, guidance=entry.guidance,
                           guidance_interval=entry.guidance_interval)
    guided = [t for t in config.make_scheduler().timesteps.tolist() if config.guided_at(t)]
    assert guided == list(range(699, 0, -50))
