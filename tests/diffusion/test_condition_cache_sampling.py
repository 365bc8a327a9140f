"""The samplers condition the MCVD network once per block (MCVD.condition) and
reuse the cache at every step: predictions equal the uncached network's, bit
for bit with SPATIN and within float32's own error with concat."""
import copy
import math

import pytest
import torch

import mcvd

K, P, SIZE = 2, 2, 8


def tiny_mcvd(conditioning: str, f: int = 0, cond_emb: bool = False) -> mcvd.MCVD:
    cfg = mcvd.ModelConfig(image_size=SIZE, channels=1, num_frames=K, num_frames_cond=P, num_frames_future=f, ngf=8,
                           ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), n_head_channels=8, dropout=0.0,
                           conditioning=conditioning, spade_dim=8, cond_emb=cond_emb, num_timesteps=100)
    model = mcvd.MCVD(cfg)
    with torch.no_grad():  # random weights everywhere (the DDPM init zeroes each residual branch's last layer)
        for p in model.parameters():
            p.normal_(0.0, 1.0 / math.sqrt(p[0].numel()) if p.dim() > 1 else 0.3)
    return model.eval()


class Uncached(torch.nn.Module):
    """The same network without `condition`: the samplers call it with cond at every step."""

    def __init__(self, model, dtype=None):
        super().__init__()
        self.model, self.config, self.dtype = model, model.config, dtype

    def forward(self, x, t, cond, cond_mask=None):
        if self.dtype is None:
            return self.model(x, t, cond, cond_mask)
        out = self.model(x.to(self.dtype), t, None if cond is None else cond.to(self.dtype), cond_mask)
        return out.to(x.dtype)


class CountingConditions(torch.nn.Module):
    """Passes through to the model and counts condition() and cached calls."""

    def __init__(self, model):
        super().__init__()
        self.model, self.config = model, model.config
        self.conditions, self.cached_calls, self.plain_calls = [], 0, 0

    def condition(self, cond, cond_mask=None):
        self.conditions.append(cond.shape[0])
        return self.model.condition(cond, cond_mask)

    def forward(self, x, t, cond=None, cond_mask=None, *, cache=None):
        if cache is None:
            self.plain_calls += 1
        else:
            self.cached_calls += 1
        return self.model(x, t, cond, cond_mask, cache=cache)


def video(B, T):
    return torch.rand(B, T, 1, SIZE, SIZE) * 2 - 1


TASKS = {  # name -> (f, predict keywords)
    "prediction": (0, dict(num_frames=5)),
    "prediction+guidance": (0, dict(num_frames=3, guidance=1.7)),
    "interpolation": (1, dict(num_frames=K, future=True)),
    "interpolation+guidance": (1, dict(num_frames=K, future=True, guidance=0.6)),
    "generation": (0, dict(num_frames=4, past=None, batch_size=2)),
}


def run(model, f, method="ddim", **kw):
    """predict with the task's keywords; the same frames and draws for every model."""
    torch.manual_seed(0)
    past = kw.pop("past") if "past" in kw else video(2, P)
    if kw.pop("future", False):
        kw["future"] = video(2, f)
    return mcvd.predict(model, past, kw.pop("num_frames"), method=method, steps=3,
                        generator=torch.Generator().manual_seed(1), **kw)


@pytest.mark.parametrize("method", ["ddpm", "dpm++"])
@pytest.mark.parametrize("cond_emb", [False, True])
@pytest.mark.parametrize("task", TASKS)
def test_spatin_predictions_equal_the_uncached_network_bit_for_bit(task, cond_emb, method):
    f, kw = TASKS[task]
    model = tiny_mcvd("spatin", f=f, cond_emb=cond_emb)
    cached, uncached = run(model, f, method, **kw), run(Uncached(model), f, method, **kw)
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize("task", TASKS)
def test_concat_predictions_within_float32_error(task, assert_within_eager_error):
    """Against the rollout of the same network in float64 (the sampler in
    float32 for both): the cache's reordered conv_in sums keep the
    prediction as close as the uncached float32 network's (within 2x)."""
    f, kw = TASKS[task]
    model = tiny_mcvd("concat", f=f, cond_emb=True)
    exact = run(Uncached(copy.deepcopy(model).double(), torch.float64), f, **kw)
    cached, uncached = run(model, f, **kw), run(Uncached(model), f, **kw)
    assert_within_eager_error(cached, exact.double(), uncached, factor=2.0, atol=2 * 2.0**-23)  # 2 ulps of 1.0


@pytest.mark.parametrize("guidance", [None, 2.0])
def test_one_condition_per_block_and_every_step_cached(guidance):
    model = CountingConditions(tiny_mcvd("spatin"))
    mcvd.predict(model, video(3, P), 3 * K, method="ddim", steps=4, guidance=guidance)
    batch = 3 if guidance is None else 6  # guidance: the conditional half, then the masked half
    assert model.conditions == [batch] * 3
    assert (model.cached_calls, model.plain_calls) == (3 * 4, 0)


def test_streaming_predictions_equal_the_uncached_network():
    model = tiny_mcvd("spatin", f=1)
    frames = video(1, 4)
    out = {}
    for name, m in (("cached", model), ("uncached", Uncached(model))):
        stream = mcvd.StreamingPredictor(m, mcvd.SamplerConfig(method="dpm++", steps=3),
                                         generator=torch.Generator().manual_seed(0))
        out[name] = [stream(frames[:, i]) for i in range(4)]
    assert out["cached"][:P - 1] == [None] * (P - 1)
    for a, b in zip(out["cached"][P - 1:], out["uncached"][P - 1:]):
        assert torch.equal(a, b)


@pytest.mark.gpu
@pytest.mark.parametrize("guidance", [None, 1.5])
def test_cuda_graph_with_the_cache_equals_the_uncached_network(guidance):
    """The cache is built inside the captured region, from the static cond
    buffer: every replay (a new block, new frames) must recompute it."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    cuda = torch.device("cuda")
    model = tiny_mcvd("spatin", f=1).to(cuda)
    past = torch.rand(2, P, 1, SIZE, SIZE, device=cuda) * 2 - 1

    def predict(m, graph):
        return mcvd.predict(m, past, 3 * K, method="dpm++", steps=4, guidance=guidance, cuda_graph=graph,
                            generator=torch.Generator(cuda).manual_seed(1))
    # Three blocks: the second and third replay the graph with new past frames.
    torch.testing.assert_close(predict(model, True), predict(Uncached(model), False), rtol=1e-5, atol=1e-5)
