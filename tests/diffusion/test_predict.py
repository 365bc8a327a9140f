"""Video tasks: rollout bookkeeping with toy models, masks, guidance, samples, errors, a tiny real MCVD."""
import dataclasses

import pytest
import torch
from diffusion_toys import GEN, STEP, OracleModel, ZeroEpsModel, frame_labels, labelled_video, toy_config

import mcvd

C, SIZE = 2, 5


def past_video(B, T, start=0.0, dtype=torch.float32):
    """Frames labelled start + STEP * i, offset by 0.2 per batch row."""
    labels = start + STEP * torch.arange(T, dtype=torch.float64) + 0.2 * torch.arange(B, dtype=torch.float64)[:, None]
    return labelled_video(labels, C, SIZE, dtype)


@pytest.mark.parametrize("method", ["ddpm", "ddim", "dpm++"])
@pytest.mark.parametrize("k, p, num_frames", [(3, 2, 7), (2, 3, 5), (2, 2, 2), (4, 1, 3)])
def test_prediction_rollout_continues_the_past(method, k, p, num_frames):
    model = OracleModel(toy_config(k=k, p=p, channels=C, size=SIZE))
    past = past_video(2, p + 2)  # longer than p: the last p frames are used
    video = mcvd.predict(model, past, num_frames, method=method, steps=4)
    assert video.shape == (2, num_frames, C, SIZE, SIZE)
    expected = frame_labels(past)[:, -1:] + STEP * torch.arange(1, num_frames + 1)
    torch.testing.assert_close(frame_labels(video), expected, rtol=0, atol=1e-5)


def test_rollout_slides_the_newest_frames_into_the_past_window():
    k, p = 3, 2
    model = OracleModel(toy_config(k=k, p=p, channels=C, size=SIZE))
    past = past_video(1, p)
    mcvd.predict(model, past, 3 * k, method="ddim", steps=2)
    windows = [frame_labels(cond)[0] for _, cond, _ in model.calls[::2]]  # first call of each block
    assert len(windows) == 3
    last = frame_labels(past)[0, -1]
    for j, window in enumerate(windows):  # block j sees the p frames before its first frame
        expected = last + STEP * torch.arange(j * k - p + 1, j * k + 1)
        torch.testing.assert_close(window, expected.float(), rtol=0, atol=1e-5)
    assert all(mask.tolist() == [[True, False]] for _, _, mask in model.calls)


def test_generation_starts_unconditional_then_predicts():
    k, p = 2, 2
    model = OracleModel(toy_config(k=k, p=p, channels=C, size=SIZE))
    video = mcvd.predict(model, None, 5, batch_size=3, method="ddim", steps=2)
    expected = GEN + STEP * torch.arange(5)
    torch.testing.assert_close(frame_labels(video), expected.expand(3, 5).float(), rtol=0, atol=1e-5)
    first, later = model.calls[0], model.calls[2:]
    assert first[2].tolist() == [[False, False]] * 3
    assert torch.count_nonzero(first[1]) == 0  # masked past is zeros
    assert all(mask.tolist() == [[True, False]] * 3 for _, _, mask in later)


def test_interpolation_fills_the_frames_between_past_and_future():
    k, p, f = 3, 2, 1
    model = OracleModel(toy_config(k=k, p=p, f=f, channels=C, size=SIZE))
    past = past_video(2, p)
    future = past_video(2, 2, start=0.5)  # the first f frames are used
    video = mcvd.predict(model, past, k, future=future, method="dpm++", steps=3)
    a, b = frame_labels(past)[:, -1:], frame_labels(future)[:, :1]
    expected = a + (b - a) * torch.arange(1, k + 1) / (k + 1)
    torch.testing.assert_close(frame_labels(video), expected, rtol=0, atol=1e-5)
    assert model.calls[0][2].tolist() == [[True, True]] * 2


def test_prediction_with_a_future_slot_masks_it():
    model = OracleModel(toy_config(k=2, p=2, f=1, channels=C, size=SIZE))
    mcvd.predict(model, past_video(1, 2), 4, method="ddim", steps=2)
    assert all(mask.tolist() == [[True, False]] for _, _, mask in model.calls)
    assert all(torch.count_nonzero(cond[:, 2]) == 0 for _, cond, _ in model.calls)


def test_guidance_mixes_conditional_and_unconditional_eps():
    w = 2.5
    model = OracleModel(toy_config(k=2, p=2, channels=C, size=SIZE))
    past = past_video(2, 2)
    video = mcvd.predict(model, past, 2, guidance=w, method="ddim", steps=3, clip_x0=False)
    cond = frame_labels(past)[:, -1:] + STEP * torch.arange(1, 3)
    uncond = GEN + STEP * torch.arange(2)
    # Unclipped, x0 is linear in eps, so the guided x0 is uncond + w (cond - uncond).
    torch.testing.assert_close(frame_labels(video), uncond + w * (cond - uncond), rtol=0, atol=1e-5)
    assert model.calls[0][2].tolist() == [[True, False]] * 2 + [[False, False]] * 2


def test_samples_are_independent_draws_per_input():
    model = ZeroEpsModel(toy_config(k=2, p=2, channels=C, size=SIZE))
    past = past_video(2, 2)
    video = mcvd.predict(model, past, 3, samples=4, method="ddpm", steps=3)
    assert video.shape == (4, 2, 3, C, SIZE, SIZE)
    flat = video.flatten(2)
    assert all(not torch.equal(flat[i], flat[j]) for i in range(4) for j in range(i))


def test_samples_keep_each_input_with_its_own_past():
    model = OracleModel(toy_config(k=2, p=2, channels=C, size=SIZE))
    past = past_video(3, 2)
    video = mcvd.predict(model, past, 4, samples=2, method="ddim", steps=2)
    expected = frame_labels(past)[:, -1:] + STEP * torch.arange(1, 5)
    torch.testing.assert_close(frame_labels(video), expected.expand(2, 3, 4), rtol=0, atol=1e-5)


def test_same_generator_seed_same_video():
    model = ZeroEpsModel(toy_config(k=2, p=2, channels=C, size=SIZE))
    past = past_video(2, 2)

    def run(seed):
        return mcvd.predict(model, past, 5, method="ddpm", steps=4, generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(run(3), run(3), rtol=0, atol=0)
    assert not torch.equal(run(3), run(4))


def test_float64_videos_stay_float64():
    model = OracleModel(toy_config(k=2, p=2, channels=C, size=SIZE))
    video = mcvd.predict(model, past_video(1, 2, dtype=torch.float64), 2, steps=2)
    assert video.dtype == torch.float64


def test_fewer_frames_than_a_block():
    model = OracleModel(toy_config(k=4, p=2, channels=C, size=SIZE))
    video = mcvd.predict(model, past_video(1, 2), 1, steps=2)
    assert video.shape == (1, 1, C, SIZE, SIZE)


@pytest.mark.parametrize("cfg, call, error, message", [
    (toy_config(), dict(past="bad_channels"), ValueError,
     r"past: expected shape \[B, T, 2, 5, 5\] \(channels and image_size of model.config\), got \[1, 2, 3, 5, 5\]"),
    (toy_config(), dict(past="short"), ValueError, r"past: expected at least 2 frames, got 1"),
    (toy_config(), dict(past="int"), TypeError, r"past: expected a float tensor \[B, T, 2, 5, 5\], got dtype torch.int64"),
    (toy_config(p=0), dict(), ValueError, r"past: the model takes no past frames \(num_frames_cond=0\)"),
    (toy_config(), dict(future="ok"), ValueError, r"future: the model takes no future frames \(num_frames_future=0\)"),
    (toy_config(f=1), dict(future="ok", num_frames=4), ValueError,
     r"num_frames: with future frames the model fills exactly k=3 frames"),
    (toy_config(f=1), dict(future="batch3"), ValueError, r"future: expected batch 1, torch.float32 on cpu \(as past\)"),
    (toy_config(), dict(past=None, batch_size=0), ValueError,
     r"batch_size: expected an int >= 1 or None \(generation: one video; else the batch of the given frames\), "
     r"got 0"),
    (toy_config(), dict(past=None, batch_size=True), ValueError, r"batch_size: expected an int >= 1 or None"),
    (toy_config(), dict(num_frames=2.0), ValueError, r"num_frames: expected an int >= 1, got 2.0"),
    (toy_config(), dict(return_context=1), TypeError, r"return_context: expected a bool, got int 1"),
    (toy_config(), dict(cuda_graph="yes"), TypeError, r"cuda_graph: expected a bool, got str 'yes'"),
    (toy_config(), dict(dtype="float32"), TypeError, r"dtype: expected a torch.dtype or None, got str 'float32'"),
    (toy_config(), dict(past=None, batch_size=2, guidance=2.0), ValueError,
     r"guidance: needs past or future frames to guide on"),
    (toy_config(), dict(batch_size=5), ValueError, r"batch_size: 5 disagrees with the batch of the given frames \(1\)"),
    (toy_config(), dict(num_frames=0), ValueError, r"num_frames: expected an int >= 1, got 0"),
    (toy_config(), dict(samples=0), ValueError, r"samples: expected an int >= 1, got 0"),
    (toy_config(p=0), dict(past=None, batch_size=1, num_frames=4), ValueError,
     r"num_frames: a model without past frames \(num_frames_cond=0\) samples at most k=3 frames"),
    (toy_config(), dict(cuda_graph=True), ValueError, r"cuda_graph: needs a CUDA device, got cpu"),
    (toy_config(), dict(guidance="2"), TypeError, r"guidance: expected None or a float weight, got '2'"),
    (toy_config(), dict(method="plms"), ValueError, r"method: expected one of"),
    (toy_config(), dict(generator=0), TypeError, r"generator: expected a torch.Generator or None, got int 0"),
    (toy_config(), dict(past=None, device="gpu0"), ValueError,
     r"device: expected a torch device such as 'cpu' or 'cuda:0', got 'gpu0'"),
])
def test_bad_inputs_are_named(cfg, call, error, message):
    videos = {"ok": past_video(1, 2), "short": past_video(1, 1), "int": torch.zeros(1, 2, C, SIZE, SIZE).long(),
              "bad_channels": torch.zeros(1, 2, 3, SIZE, SIZE), "batch3": past_video(3, 2)}
    call = {"past": "ok", "num_frames": 3, **call}
    for key in ("past", "future"):
        if isinstance(call.get(key), str):
            call[key] = videos[call[key]]
    past, num_frames = call.pop("past"), call.pop("num_frames")
    with pytest.raises(error, match=message):
        mcvd.predict(OracleModel(cfg), past, num_frames, steps=2, **call)


def test_a_model_without_config_is_refused():
    with pytest.raises(TypeError, match=r"model: expected an MCVD network whose .config \(mcvd.ModelConfig\)"):
        mcvd.predict(lambda x, t, c: x, past_video(1, 2), 2)


@pytest.mark.parametrize("conditioning, f", [("concat", 0), ("spatin", 1)])
def test_tiny_mcvd_predicts_interpolates_and_generates(conditioning, f):
    cfg = mcvd.ModelConfig(image_size=8, channels=1, num_frames=2, num_frames_cond=2, num_frames_future=f, ngf=8,
                           ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), n_head_channels=8, dropout=0.0,
                           conditioning=conditioning, spade_dim=8, num_timesteps=100)
    model = mcvd.MCVD(cfg).eval()
    past = torch.rand(2, 3, 1, 8, 8) * 2 - 1

    def run(seed, **kw):
        return mcvd.predict(model, kw.pop("past", past), kw.pop("num_frames", 3), steps=3,
                            generator=torch.Generator().manual_seed(seed), **kw)
    video = run(0)
    assert video.shape == (2, 3, 1, 8, 8) and torch.isfinite(video).all() and video.abs().max() <= 1
    torch.testing.assert_close(run(0), video, rtol=0, atol=0)
    assert run(0, past=None, batch_size=2, num_frames=4).shape == (2, 4, 1, 8, 8)
    assert run(0, method="dpm++", samples=2).shape == (2, 2, 3, 1, 8, 8)
    if f:
        future = torch.rand(2, 1, 1, 8, 8) * 2 - 1
        assert run(0, num_frames=2, future=future, guidance=1.5).shape == (2, 2, 1, 8, 8)


# --- input checks, defaults and options of the API ---------------------------


@pytest.mark.parametrize("scale, shown", [
    (lambda v: (v + 1) * 127.5, r"values in \[\d.*, \d\d\d.*\]"),  # 8-bit levels
    (lambda v: v * 100, r"values in \[-?\d.*, \d\d.*\]"),
    (lambda v: torch.full_like(v, float("nan")), r"\d+ NaN values"),
], ids=["8-bit", "x100", "NaN"])
def test_frames_outside_the_data_range_are_refused(scale, shown):
    """Frames are floats in [-1, 1]; the user's past and future frames are
    checked once per call (on a GPU that reads two numbers back, once)."""
    model = OracleModel(toy_config(k=2, p=2, f=1, channels=C, size=SIZE))
    past, future = past_video(1, 2, start=0.3), past_video(1, 1, start=0.5)
    expected = r"expected frames in \[-1, 1\] \(up to 0.001 beyond, float rounding\), got " + shown
    with pytest.raises(ValueError, match="past: " + expected):
        mcvd.predict(model, scale(past), 2, steps=2)
    with pytest.raises(ValueError, match="future: " + expected):
        mcvd.predict(model, past, 2, future=scale(future), steps=2)


def test_generation_makes_one_video_by_default():
    model = OracleModel(toy_config(k=2, p=2, channels=C, size=SIZE))
    video = mcvd.predict(model, None, num_frames=3, steps=2)
    assert video.shape == (1, 3, C, SIZE, SIZE)


def test_an_empty_batch_is_refused():
    model = OracleModel(toy_config(k=2, p=2, f=1, channels=C, size=SIZE))
    with pytest.raises(ValueError, match=r"past: expected at least one video \(B >= 1\), got shape \[0, 2, 2, 5, 5\]"):
        mcvd.predict(model, past_video(1, 2)[:0], 2, steps=2)
    with pytest.raises(ValueError, match=r"future: expected at least one video \(B >= 1\), got shape "
                                         r"\[0, 1, 2, 5, 5\]"):
        mcvd.predict(model, None, 2, future=past_video(1, 1)[:0], steps=2)


def tiny_mcvd(f=0):
    cfg = mcvd.ModelConfig(image_size=8, channels=1, num_frames=2, num_frames_cond=2, num_frames_future=f, ngf=8,
                           ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), n_head_channels=8, dropout=0.0,
                           num_timesteps=100)
    return mcvd.MCVD(cfg).eval()


def test_frames_must_have_the_networks_dtype_and_device():
    """Named as the user's argument and the model's dtype, not as the network's internal x_t."""
    model = tiny_mcvd(f=1)
    past, future = torch.rand(1, 2, 1, 8, 8) * 2 - 1, torch.rand(1, 1, 1, 8, 8) * 2 - 1
    with pytest.raises(TypeError, match=r"past: expected dtype torch.float32 \(the model's\), got torch.float16"):
        mcvd.predict(model, past.half(), 2, steps=2)
    with pytest.raises(TypeError, match=r"future: expected dtype torch.float32 \(the model's\), got torch.float64"):
        mcvd.predict(model, None, 2, future=future.double(), steps=2)
    with pytest.raises(TypeError, match=r"dtype: expected torch.float32 \(the model's\), got torch.float64"):
        mcvd.predict(model, None, 2, dtype=torch.float64, steps=2)
    with pytest.raises(ValueError, match=r"past: expected device cpu \(the model's\), got meta"):
        mcvd.predict(model, past.to("meta"), 2, steps=2)
    with pytest.raises(ValueError, match=r"device: expected cpu \(the model's\), got meta"):
        mcvd.predict(model, None, 2, device="meta", steps=2)
    with pytest.raises(TypeError, match=r"past: expected dtype torch.float32 \(the model's\), got torch.float64"):
        mcvd.predict(torch.compile(model), past.double(), 2, steps=2)  # named before the wrapper compiles anything
    assert mcvd.predict(model.double(), None, 2, steps=2).dtype == torch.float64  # generation: the model's dtype


def test_return_context_gives_the_whole_clip():
    """return_context=True: the given past, the sampled frames and the given
    future along time, the clip `mcvd sample` writes."""
    k, p, f = 3, 2, 1
    model = OracleModel(toy_config(k=k, p=p, f=f, channels=C, size=SIZE))
    past, future = past_video(2, 4), past_video(2, 2, start=0.5)

    def run(*args, **kw):
        return mcvd.predict(model, *args, method="ddim", steps=2, generator=torch.Generator().manual_seed(0), **kw)
    middle = run(past, k, future=future)
    clip = run(past, k, future=future, return_context=True)
    torch.testing.assert_close(clip, torch.cat([past, middle, future], dim=1), rtol=0, atol=0)
    predicted = run(past, 5)
    torch.testing.assert_close(run(past, 5, return_context=True), torch.cat([past, predicted], dim=1), rtol=0, atol=0)
    generated = run(None, 2, return_context=True)
    torch.testing.assert_close(generated, run(None, 2), rtol=0, atol=0)
    samples = run(past, k, future=future, samples=2, return_context=True)
    assert samples.shape == (2, 2, 4 + k + 2, C, SIZE, SIZE)
    torch.testing.assert_close(samples[:, :, :4], past.expand(2, -1, -1, -1, -1, -1), rtol=0, atol=0)
    torch.testing.assert_close(samples[:, :, -2:], future.expand(2, -1, -1, -1, -1, -1), rtol=0, atol=0)


def test_one_progress_bar_counts_every_blocks_steps(monkeypatch):
    bars = []

    class Bar:
        def __init__(self, *args, total=None, disable=False, **kw):
            self.total, self.n, self.disable = total, 0, disable
            bars.append(self)

        def update(self, n=1):
            self.n += n

        def close(self):
            pass

        def __iter__(self):  # a bar over an iterable counts it
            raise AssertionError("the blocks' loops must not open bars of their own")

    import mcvd.diffusion.sampling
    import mcvd.diffusion.tasks
    monkeypatch.setattr(mcvd.diffusion.tasks, "tqdm", Bar)
    monkeypatch.setattr(mcvd.diffusion.sampling, "tqdm", Bar)
    model = OracleModel(toy_config(k=2, p=2, channels=C, size=SIZE))
    mcvd.predict(model, past_video(1, 2), 7, method="ddim", steps=3, progress=True)  # 4 blocks
    assert [(b.total, b.n, b.disable) for b in bars] == [(12, 12, False)]


def test_rolled_out_frames_condition_the_next_block_inside_the_data_range():
    """Without clip_x0 a block's frames may leave [-1, 1]; as the past of the
    next block they are clamped to it, the range the model conditions on.
    The returned frames are the sampled ones."""
    model = OracleModel(toy_config(k=2, p=2, channels=C, size=SIZE))
    past = past_video(1, 2, start=0.985)  # labels 0.985, 0.995: the next frames pass 1
    video = mcvd.predict(model, past, 4, method="ddim", steps=2, clip_x0=False)
    torch.testing.assert_close(frame_labels(video)[0, :2], torch.tensor([1.005, 1.015]), rtol=0, atol=1e-5)
    second = model.calls[2][1]  # the second block's condition frames
    torch.testing.assert_close(frame_labels(second)[0], torch.tensor([1.0, 1.0]), rtol=0, atol=0)


def test_tiny_mcvd_rolls_out_without_clipping():
    model = tiny_mcvd()
    video = mcvd.predict(model, torch.rand(1, 2, 1, 8, 8) * 2 - 1, 5, steps=3, clip_x0=False)
    assert video.shape == (1, 5, 1, 8, 8) and torch.isfinite(video).all()


def test_a_model_with_dropout_on_is_refused_until_put_in_eval_mode():
    """In training mode dropout draws new masks at every call: samples no seed repeats."""
    cfg = dataclasses.replace(tiny_mcvd().config, dropout=0.1)
    model, past = mcvd.MCVD(cfg).train(), torch.rand(1, 2, 1, 8, 8) * 2 - 1
    with pytest.raises(ValueError, match=r"model: in training mode, with dropout on .*: call model.eval\(\)"):
        mcvd.predict(model, past, 2, steps=2)
    stream = mcvd.StreamingPredictor(model, mcvd.SamplerConfig(steps=2))
    with pytest.raises(ValueError, match=r"model: in training mode, with dropout on"):
        stream(past)
    model.eval()
    assert torch.isfinite(mcvd.predict(model, past, 2, steps=2)).all()
    no_dropout = tiny_mcvd().train()  # dropout 0: its training mode computes what eval mode does
    assert torch.equal(mcvd.predict(no_dropout, past, 2, steps=2, generator=torch.Generator().manual_seed(0)),
                       mcvd.predict(no_dropout.eval(), past, 2, steps=2, generator=torch.Generator().manual_seed(0)))


def test_frames_the_model_makes_non_finite_are_its_own_error():
    """Not handed on as the next block's condition frames, where they would be blamed on the user's input."""
    model, past = tiny_mcvd(), torch.rand(1, 2, 1, 8, 8) * 2 - 1
    with torch.no_grad():
        model.conv_out.weight[0, 0, 0, 0] = float("nan")
    for num_frames in (2, 4):
        with pytest.raises(ValueError, match=r"model: block 1 of \d it sampled holds \d+ NaN or infinite values "
                                             r"\(the given frames were finite\): its weights hold NaN or Inf"):
            mcvd.predict(model, past, num_frames, steps=2)
    with pytest.raises(ValueError, match=r"model: the block it sampled holds \d+ NaN or infinite values"):
        mcvd.StreamingPredictor(model, mcvd.SamplerConfig(steps=2))(past)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_a_cuda_device_where_torch_has_none_is_named():
    with pytest.raises(ValueError, match=r"device: cuda requested but torch sees no CUDA device"):
        mcvd.predict(tiny_mcvd(), None, 2, steps=2, device="cuda")


def test_devices_are_read_as_tensors_report_them():
    """"cpu:0" is the CPU; the meta device samples shapes without reading a value (no finiteness check there)."""
    model, past = tiny_mcvd(), torch.rand(1, 2, 1, 8, 8) * 2 - 1
    assert mcvd.predict(model, past, 2, steps=2, device="cpu:0").device == torch.device("cpu")
    assert mcvd.predict(model, None, 2, steps=2, device=torch.device("cpu", 0)).shape == (1, 2, 1, 8, 8)
    video = mcvd.predict(model.to("meta"), past.to("meta"), 4, steps=2)
    assert video.device.type == "meta" and video.shape == (1, 4, 1, 8, 8)
