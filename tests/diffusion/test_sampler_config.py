"""SamplerConfig: validation naming the field, frozen, equality, the scheduler it
builds, and sampler= giving bitwise the same samples as the keywords."""
import dataclasses
import inspect

import pytest
import torch
from diffusion_toys import ToyNet, toy_config

import mcvd
from mcvd.diffusion import DDIMScheduler, DPMSolverScheduler, SamplerConfig, Schedule, make_scheduler
from mcvd.diffusion.sampling import SAMPLE_DEFAULTS
from mcvd.diffusion.tasks import BlockSampler


def test_defaults_are_predicts():
    s = SamplerConfig()
    assert (s.method, s.steps, s.eta, s.clip_x0, s.schedule, s.spacing, s.backend, s.guidance,
            s.guidance_interval) == ("ddim", 100, 0.0, True, None, "trailing", None, None, None)
    assert mcvd.SamplerConfig is SamplerConfig


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(method="plms"), ValueError, r"method: expected one of \('ddpm', 'ddim', 'dpm\+\+'\), got 'plms'"),
    (dict(steps=0), ValueError, r"steps: expected an int >= 1 or None \(every timestep\), got 0"),
    (dict(steps=2.0), ValueError, r"steps: expected an int >= 1 or None \(every timestep\), got 2.0"),
    (dict(steps=True), ValueError, r"steps: expected an int >= 1 or None \(every timestep\), got True"),
    (dict(steps=20, schedule=Schedule.linear(10)), ValueError, r"steps: expected an int in 1\.\.10"),
    (dict(eta=-0.5), ValueError, r"eta: expected a float >= 0, got -0.5"),
    (dict(eta=float("inf")), ValueError, r"eta: expected a float >= 0, got inf"),
    (dict(eta="1"), ValueError, r"eta: expected a float >= 0, got '1'"),
    (dict(method="dpm++", eta=0.5), ValueError,
     r"eta: only method='ddim' takes eta, got eta=0.5 with method='dpm\+\+'"),
    (dict(clip_x0=1), TypeError, r"clip_x0: expected a bool, got 1"),
    (dict(schedule=torch.ones(3)), TypeError, r"schedule: expected an mcvd.diffusion.Schedule or None, got Tensor"),
    (dict(spacing="leading"), ValueError, r"spacing: expected one of \('trailing', .*\), got 'leading'"),
    (dict(steps=100, spacing="quadratic", schedule=Schedule.linear(1000)), ValueError,
     r"spacing: 'quadratic' repeats timesteps for steps=100 of T=1000"),
    (dict(backend="numpy"), ValueError, r"backend: expected one of \('reference', 'cpu', 'cuda', 'triton'\) or None"),
    (dict(guidance="2"), TypeError, r"guidance: expected None or a float weight, got '2'"),
    (dict(guidance=True), TypeError, r"guidance: expected None or a float weight, got True"),
    (dict(guidance=float("nan")), ValueError, r"guidance: expected a finite weight, got nan"),
    (dict(guidance_interval=(0, 700)), ValueError,
     r"guidance_interval: \(0, 700\) limits guidance to some steps, but guidance is None"),
    *[(dict(guidance=2.0, guidance_interval=bad), ValueError,
       r"guidance_interval: expected None or a pair of timesteps \(lo, hi\) with 0 <= lo <= hi, got ")
      for bad in [(700, 0), (-1, 700), (0.0, 700), (True, 700), (0, 1, 2), 700, "0,700"]],
])
def test_each_bad_field_is_named(kwargs, error, message):
    with pytest.raises(error, match=message):
        SamplerConfig(**kwargs)


def test_unknown_options_raise():
    with pytest.raises(TypeError, match="steos"):
        SamplerConfig(steos=10)


def test_frozen_and_normalised():
    s = SamplerConfig(method="ddim", eta=1, guidance=2)
    assert type(s.eta) is float and type(s.guidance) is float and s.guidance == 2.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.steps = 5
    assert dataclasses.replace(s, steps=5).steps == 5 and s.steps == 100
    assert SamplerConfig(guidance=2, guidance_interval=[0, 700]).guidance_interval == (0, 700)  # a list: a tuple


def test_equality_and_hash_compare_schedules_by_value():
    a = SamplerConfig(method="dpm++", steps=10, schedule=Schedule.linear(50))
    b = SamplerConfig(method="dpm++", steps=10, schedule=Schedule.linear(50))
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert a != SamplerConfig(method="dpm++", steps=10, schedule=Schedule.cosine(50))
    assert a != SamplerConfig(method="dpm++", steps=10)
    assert SamplerConfig() == SamplerConfig(method="ddim", steps=100) and SamplerConfig() != "ddim"
    # The schedules themselves compare and hash by value too.
    assert Schedule.linear(50) == Schedule.linear(50) and len({Schedule.linear(50), Schedule.linear(50)}) == 1
    assert Schedule.linear(50) != Schedule.cosine(50) and Schedule.linear(50) != Schedule.linear(51)
    assert Schedule.linear(50) != "linear"


def test_make_scheduler_sets_the_timesteps():
    model = ToyNet(toy_config(num_timesteps=50))
    sch = SamplerConfig(method="ddim", steps=None, eta=0.5, clip_x0=False, spacing="linspace").make_scheduler(model)
    assert isinstance(sch, DDIMScheduler) and sch.eta == 0.5 and not sch.clip_x0
    assert sch.num_train_timesteps == 50 and sch.num_inference_steps == 50  # steps=None: every timestep
    sch = SamplerConfig(method="dpm++", steps=4, schedule=Schedule.cosine(30), backend="reference").make_scheduler()
    assert isinstance(sch, DPMSolverScheduler) and sch.num_train_timesteps == 30 and sch.backend == "reference"
    assert sch.timesteps.tolist() == [29, 22, 14, 7]
    assert SamplerConfig(steps=3).make_scheduler().num_train_timesteps == 1000  # no model: T = 1000


def test_make_scheduler_function_validates_through_the_config():
    with pytest.raises(ValueError, match=r"eta: only method='ddim' takes eta"):
        make_scheduler("ddpm", eta=0.5)
    assert make_scheduler("ddim", eta=0.3).timesteps is None  # not set yet


def test_signature_defaults_match_the_configs_that_resolve_them():
    """A keyword equal to its default is not a conflict with sampler=: the
    defaults resolve_sampler compares with must be the signature's."""
    for fn, defaults in ((mcvd.sample, SAMPLE_DEFAULTS), (mcvd.predict, SamplerConfig())):
        params = inspect.signature(fn).parameters
        for f in dataclasses.fields(SamplerConfig):
            if f.name in params:
                assert params[f.name].default == getattr(defaults, f.name), (fn.__name__, f.name)
    assert SAMPLE_DEFAULTS == SamplerConfig(method="ddpm", steps=None)
    assert inspect.signature(mcvd.StreamingPredictor).parameters["sampler"].default == SamplerConfig(
        method="dpm++", steps=10)


C, SIZE, T = 1, 6, 50


def net(f=0, num_timesteps=T):
    torch.manual_seed(3)
    return ToyNet(toy_config(k=2, p=2, f=f, channels=C, size=SIZE, num_timesteps=num_timesteps))


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("options", [
    dict(method="ddpm", steps=5),
    dict(method="ddim", steps=4, eta=0.7, spacing="uniform"),
    dict(method="dpm++", steps=6, clip_x0=False),
    dict(method="ddim", steps=3, guidance=1.5, schedule=Schedule.cosine(T)),
    dict(method="ddpm", steps=None, guidance=-0.5, backend="reference"),
])
def test_predict_with_sampler_equals_predict_with_keywords(options):
    model, past = net(), torch.rand(2, 3, C, SIZE, SIZE) * 2 - 1
    by_keywords = mcvd.predict(model, past, 5, samples=2, generator=gen(), **options)
    by_config = mcvd.predict(model, past, 5, samples=2, generator=gen(), sampler=SamplerConfig(**options))
    assert torch.equal(by_config, by_keywords)


def test_predict_defaults_are_the_default_config():
    model, past = net(f=1, num_timesteps=200), torch.rand(1, 2, C, SIZE, SIZE) * 2 - 1
    assert torch.equal(mcvd.predict(model, past, 3, sampler=SamplerConfig(), generator=gen(1)),
                       mcvd.predict(model, past, 3, generator=gen(1)))


@pytest.mark.parametrize("options", [dict(), dict(method="ddim", steps=7, eta=1.0), dict(method="dpm++", steps=5)])
def test_sample_with_sampler_equals_sample_with_keywords(options):
    model = net()
    cond, mask = torch.rand(2, 2, C, SIZE, SIZE), torch.ones(2, 2, dtype=torch.bool)
    shape = (2, 2, C, SIZE, SIZE)
    by_keywords = mcvd.sample(model, shape, cond=cond, cond_mask=mask, generator=gen(4), **options)
    config = dataclasses.replace(SAMPLE_DEFAULTS, **options)
    by_config = mcvd.sample(model, shape, cond=cond, cond_mask=mask, generator=gen(4), sampler=config)
    assert torch.equal(by_config, by_keywords)


def test_a_real_tiny_mcvd_gives_the_same_video_either_way():
    cfg = mcvd.ModelConfig(image_size=8, channels=1, num_frames=2, num_frames_cond=2, num_frames_future=1, ngf=8,
                           ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), n_head_channels=8, dropout=0.0,
                           conditioning="spatin", spade_dim=8, num_timesteps=100)
    model = mcvd.MCVD(cfg).eval()
    past, future = torch.rand(2, 2, 1, 8, 8) * 2 - 1, torch.rand(2, 1, 1, 8, 8) * 2 - 1
    a = mcvd.predict(model, past, 2, future=future, method="ddpm", steps=3, guidance=2.0, generator=gen(5))
    b = mcvd.predict(model, past, 2, future=future, generator=gen(5),
                     sampler=SamplerConfig(method="ddpm", steps=3, guidance=2.0))
    assert torch.equal(a, b)


def test_sampler_and_a_differing_keyword_conflict():
    model, past = net(), torch.rand(1, 2, C, SIZE, SIZE)
    sampler = SamplerConfig(method="dpm++", steps=3)
    with pytest.raises(ValueError, match=r"sampler: given together with steps=5, guidance=1.0; pass the sampler"):
        mcvd.predict(model, past, 2, sampler=sampler, steps=5, guidance=1.0)
    with pytest.raises(ValueError, match=r"sampler: given together with schedule=Schedule"):
        mcvd.predict(model, past, 2, sampler=sampler, schedule=Schedule.linear(T))
    with pytest.raises(ValueError, match=r"sampler: given together with method='ddim'"):
        mcvd.sample(model, (1, 2, C, SIZE, SIZE), sampler=sampler, method="ddim")
    with pytest.raises(TypeError, match=r"sampler: expected an mcvd.SamplerConfig or None, got str"):
        mcvd.predict(model, past, 2, sampler="dpm++")
    # Keywords equal to their defaults are no conflict: the sampler decides.
    a = mcvd.predict(model, past, 2, sampler=sampler, method="ddim", steps=100, eta=0, generator=gen())
    assert torch.equal(a, mcvd.predict(model, past, 2, method="dpm++", steps=3, generator=gen()))


def test_block_sampler_takes_a_config():
    model = net()
    block = BlockSampler(model, SamplerConfig(method="ddpm", steps=4, guidance=1.5), device=torch.device("cpu"),
                         dtype=torch.float32)
    assert block.guidance == 1.5 and block.scheduler.num_inference_steps == 4
    cond, mask = torch.rand(3, 2, C, SIZE, SIZE), torch.ones(3, 2, dtype=torch.bool)
    assert block(cond, mask, 3).shape == (3, 2, C, SIZE, SIZE)
    with pytest.raises(TypeError, match=r"sampler: expected an mcvd.SamplerConfig, got dict"):
        BlockSampler(model, dict(method="ddpm"), device=torch.device("cpu"), dtype=torch.float32)
    with pytest.raises(ValueError, match=r"cuda_graph: needs a CUDA device, got cpu"):
        BlockSampler(model, SamplerConfig(), cuda_graph=True, device=torch.device("cpu"), dtype=torch.float32)


def test_a_schedule_over_another_T_than_the_models_is_refused():
    """The network reads t as a step of its own num_timesteps: the error names `schedule`, not the network's t."""
    cfg = mcvd.ModelConfig(image_size=8, channels=1, num_frames=1, num_frames_cond=1, ngf=8, ch_mult=(1,),
                           num_res_blocks=1, attn_resolutions=(), num_timesteps=100)
    model = mcvd.MCVD(cfg).eval()
    past = torch.zeros(1, 1, 1, 8, 8)
    with pytest.raises(ValueError, match=r"schedule: expected a schedule over the model's num_timesteps=100, got "
                                         r"one over 1000"):
        mcvd.predict(model, past, num_frames=1, steps=2, schedule=Schedule.linear(1000))
    with pytest.raises(ValueError, match="schedule: expected"):
        mcvd.StreamingPredictor(model, mcvd.SamplerConfig(steps=2, schedule=Schedule.linear(50)))(
            torch.zeros(1, 1, 8, 8))
    out = mcvd.predict(model, past, num_frames=1, steps=2, schedule=Schedule.cosine(100))
    assert out.shape == (1, 1, 1, 8, 8)


def test_numpy_integers_count_as_ints():
    """Counts read from NumPy (np.arange, an array's shape products) are ints; they are stored as Python ints."""
    np = pytest.importorskip("numpy")
    s = SamplerConfig(method="ddpm", steps=np.int64(4), guidance=np.float32(2),
                      guidance_interval=(np.int64(0), np.int64(700)))
    assert (type(s.steps), s.steps, s.guidance_interval, type(s.guidance_interval[0])) == (int, 4, (0, 700), int)
    assert s == SamplerConfig(method="ddpm", steps=4, guidance=2.0, guidance_interval=(0, 700))
    model, past = net(), torch.rand(1, 3, C, SIZE, SIZE) * 2 - 1
    assert torch.equal(mcvd.predict(model, past, np.int64(3), samples=np.int32(2), method="ddim", steps=np.int64(2),
                                    generator=gen()),
                       mcvd.predict(model, past, 3, samples=2, method="ddim", steps=2, generator=gen()))
    with pytest.raises(ValueError, match=r"num_frames: expected an int >= 1, got True"):
        mcvd.predict(model, past, True)
