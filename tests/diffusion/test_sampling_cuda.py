"""GPU path of the samplers: no host sync in the loop, CUDA-graph replay equal to eager.

The graph machinery is checked with ToyNet (only device ops); the last tests
run the real MCVD network, which must not sync either (a failed capture
leaves the CUDA generator unusable for the rest of the process, so they run last).
"""
import pytest
import torch
from diffusion_toys import OracleModel, ToyNet, frame_labels, labelled_video, toy_config

import mcvd
from mcvd.diffusion import Schedule, denoise, make_scheduler

pytestmark = pytest.mark.gpu


@pytest.fixture
def cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    return torch.device("cuda")


def tiny_mcvd(device, f=0, conditioning="concat"):
    cfg = mcvd.ModelConfig(image_size=16, channels=1, num_frames=3, num_frames_cond=2, num_frames_future=f, ngf=16,
                           ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), n_head_channels=16,
                           dropout=0.0, conditioning=conditioning, spade_dim=16)
    return mcvd.MCVD(cfg).to(device).eval()


class SyncError(AssertionError):
    pass


def run_without_sync(fn):
    """Run fn with CUDA's sync debug mode set to error: any op that makes the
    host wait for the device (.item(), D2H copies, nonzero, ...) raises."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        return fn()
    except RuntimeError as e:
        raise SyncError(f"the loop synchronised host and device: {e}") from e
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("method, eta", [("ddpm", 0.0), ("ddim", 0.0), ("ddim", 0.7), ("dpm++", 0.0)])
def test_the_sampling_loop_never_syncs(cuda, method, eta):
    abar = Schedule.linear().alphas_cumprod.to(cuda, torch.float32)

    def eps_fn(x, t):
        a = abar[t].view(-1, 1, 1)
        return (x - a.sqrt() * 0.5) * (1 - a).sqrt() / (a * 0.25 + 1 - a)

    sch = make_scheduler(method, eta=eta).set_timesteps(20, device=cuda)
    g = torch.Generator(cuda).manual_seed(0)
    x_T = torch.randn(4, 3, 8, device=cuda, generator=g)
    denoise(eps_fn, sch, x_T, generator=g)  # warm-up: lazy initialisation may sync once
    out = run_without_sync(lambda: denoise(eps_fn, sch, x_T, generator=g))
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("method, guidance", [("ddim", None), ("dpm++", None), ("ddim", 2.0)])
def test_cuda_graph_replay_equals_eager(cuda, method, guidance):
    model = ToyNet(toy_config(k=3, p=2, channels=1, size=16)).to(cuda)
    past = torch.rand(2, 2, 1, 16, 16, device=cuda) * 2 - 1

    def run(graph):
        return mcvd.predict(model, past, 7, method=method, steps=6, guidance=guidance, cuda_graph=graph,
                            generator=torch.Generator(cuda).manual_seed(1))
    eager, graphed = run(False), run(True)  # 3 blocks: one capture, three replays
    torch.testing.assert_close(graphed, eager, rtol=1e-5, atol=1e-5)


def test_cuda_graph_rollout_bookkeeping(cuda):
    model = OracleModel(toy_config(k=3, p=2, channels=1, size=4)).to(cuda)
    past = labelled_video(torch.tensor([[0.1, 0.11]]), 1, 4).to(cuda)
    video = mcvd.predict(model, past, 8, method="ddim", steps=4, cuda_graph=True)
    expected = 0.11 + 0.01 * torch.arange(1, 9, device=cuda)
    torch.testing.assert_close(frame_labels(video)[0], expected.float(), rtol=0, atol=1e-5)


def test_cuda_graph_ddpm_draws_fresh_noise_every_replay(cuda):
    model = ToyNet(toy_config(k=3, p=2, channels=1, size=16)).to(cuda)
    past = torch.rand(1, 2, 1, 16, 16, device=cuda) * 2 - 1

    def run(seed):
        return mcvd.predict(model, past, 6, method="ddpm", steps=5, samples=2, cuda_graph=True,
                            generator=torch.Generator(cuda).manual_seed(seed))
    video = run(3)
    assert torch.isfinite(video).all()
    assert not torch.equal(video[0], video[1])  # two samples
    assert not torch.equal(video[:, :, :3], video[:, :, 3:])  # two blocks, two replays
    torch.testing.assert_close(run(3), video, rtol=0, atol=0)


def test_streaming_with_cuda_graph_equals_eager(cuda):
    model = ToyNet(toy_config(k=3, p=2, f=1, channels=1, size=16)).to(cuda)
    frames = torch.rand(2, 5, 1, 16, 16, device=cuda) * 2 - 1

    def stream(graph):
        s = mcvd.StreamingPredictor(model, mcvd.SamplerConfig(method="dpm++", steps=5), cuda_graph=graph,
                                    generator=torch.Generator(cuda).manual_seed(2))
        return [s(frames[:, i]) for i in range(5)]
    eager, graphed = stream(False), stream(True)
    assert eager[0] is None and graphed[0] is None
    for e, g in zip(eager[1:], graphed[1:]):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


def test_a_block_of_the_real_network_never_syncs(cuda):
    model = tiny_mcvd(cuda)
    sch = make_scheduler("ddim").set_timesteps(5, device=cuda)
    cond = torch.rand(2, 2, 1, 16, 16, device=cuda) * 2 - 1
    mask = torch.ones(2, 2, dtype=torch.bool, device=cuda)
    x_T = torch.randn(2, 3, 1, 16, 16, device=cuda)

    def block():
        with torch.no_grad():
            return denoise(lambda x, t: model(x, t, cond, cond_mask=mask), sch, x_T)
    block()
    assert torch.isfinite(run_without_sync(block)).all()


def test_cuda_graph_of_the_real_network_equals_eager(cuda):
    model = tiny_mcvd(cuda, f=1, conditioning="spatin")
    past = torch.rand(2, 2, 1, 16, 16, device=cuda) * 2 - 1

    def run(graph):
        return mcvd.predict(model, past, 6, method="dpm++", steps=5, cuda_graph=graph,
                            generator=torch.Generator(cuda).manual_seed(1))
    torch.testing.assert_close(run(True), run(False), rtol=1e-5, atol=1e-5)
