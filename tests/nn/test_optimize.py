"""mcvd.optimize against the eager network.

The weights must be non-trivial: the DDPM init leaves every residual
branch's last layer near zero, so a fresh network hides a compiler that gets
the branches wrong (tests/nn/test_compile_freezing.py). The networks are the
reference checkpoints concat_small and spatin_small (../shared/fixtures/official),
or, without the fixtures, networks of the same configs with random weights
of that scale in every layer.

Compiling costs tens of seconds per network and input shape on two cores:
each compiled module below is built once and shared (functools.cache), and
every compiled test calls it with the shapes it was compiled for.
"""
import contextlib
import copy
import functools
import math

import pytest
import torch
from official_fixtures import FIXTURES

import mcvd
from mcvd.nn.blocks import ResBlock
from mcvd.nn.optimize import TOLERANCE, OptimizedMCVD, tolerance

SMALL = dict(image_size=32, channels=1, num_frames=2, num_frames_cond=2, ngf=32, ch_mult=(1, 2), num_res_blocks=1,
             attn_resolutions=(16,), n_head_channels=16, dropout=0.1, spade_dim=32)
CONFIGS = {"concat_small": mcvd.ModelConfig(**SMALL),
           "spatin_small": mcvd.ModelConfig(**SMALL, num_frames_future=1, conditioning="spatin")}
# Per sample: (past given, future given) - all given, past masked, future masked.
MASK = torch.tensor([[True, True], [False, True], [True, False]])
slow = pytest.mark.slow


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def randomized(model: mcvd.MCVD, seed: int = 0) -> mcvd.MCVD:
    """Random weights of a trained network's scale in every layer (fan-in scaled)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            fan_in = p[0].numel() if p.dim() > 1 else 1
            p.copy_(torch.randn(p.shape, generator=gen) * (1 / math.sqrt(fan_in) if p.dim() > 1 else 0.3))
    return model.eval()


@functools.cache
def network_and_inputs(name: str):
    """(model, (x_t [3, k, C, H, W], t [3], cond [3, p+f, C, H, W]))."""
    cfg = CONFIGS[name]
    if (FIXTURES / name).is_dir():
        model, cfg = mcvd.load(FIXTURES / name / "checkpoint.pt")
        io = torch.load(FIXTURES / name / "io.pt", weights_only=True)
        x, t, cond = io["x"], cfg.num_timesteps - 1 - io["t_official"], io["cond"]
    else:
        model = randomized(mcvd.MCVD(cfg))
        gen = torch.Generator().manual_seed(1)
        S = cfg.image_size
        x = torch.randn(3, cfg.num_frames, S, S, generator=gen)
        t = torch.tensor([999, 500, 3])
        cond = torch.rand(3, cfg.num_cond_frames, S, S, generator=gen) * 2 - 1
    S, C = cfg.image_size, cfg.channels
    return model.eval(), (x.view(3, -1, C, S, S), t, cond.view(3, -1, C, S, S))


# One compiled graph per network: concat through forward(x_t, t, cond,
# cond_mask), SPATIN through condition() then forward(cache=...) - what the
# samplers call - so both conditionings and both paths are covered.
CACHED = {"concat_small": False, "spatin_small": True}


@functools.cache
def optimized_and_eager(name: str):
    """(optimized module, its eps, eager eps without a cache), masks as MASK."""
    model, (x, t, cond) = network_and_inputs(name)
    fast = mcvd.optimize(model)
    with torch.no_grad():
        eager = model(x, t, cond, cond_mask=MASK)
    if CACHED[name]:
        out = fast(x, t, cache=fast.condition(cond, MASK))
    else:
        out = fast(x.flatten(1, 2), t, cond.flatten(1, 2), cond_mask=MASK).view(x.shape)  # the stacked layout
    return fast, out, eager


@slow
@pytest.mark.parametrize("name", list(CACHED))
def test_optimized_matches_eager(name):
    """float32, ~40 layers, oneDNN's convolution algorithms against ATen's:
    ~1e-6 measured; a lost residual branch is ~0.7."""
    fast, out, eager = optimized_and_eager(name)
    assert isinstance(fast, OptimizedMCVD)
    assert out.shape == eager.shape and out.dtype == torch.float32
    assert rel_err(out, eager) <= TOLERANCE[torch.float32]


@slow
def test_the_cpu_condition_cache_is_channels_last():
    """On the CPU the compiled network runs channels_last (module docstring of
    mcvd.nn.optimize); the cache's SPATIN maps are built in that layout, which
    the norms read in place, and the eager network's own cache stays contiguous."""
    fast, _, _ = optimized_and_eager("spatin_small")
    model, (_, _, cond) = network_and_inputs("spatin_small")
    maps = [m for pair in fast.condition(cond, MASK).spatin.values() for m in pair]
    assert maps and all(m.is_contiguous(memory_format=torch.channels_last) and not m.is_contiguous() for m in maps)
    with torch.no_grad():
        assert all(m.is_contiguous() for pair in model.condition(cond, MASK).spatin.values() for m in pair)


@pytest.mark.parametrize("name", ["concat_small", "spatin_small"])
def test_the_weights_are_not_trivial(name):
    """Every residual branch's last layer is as large as its first (the DDPM
    init leaves it at 1e-10 of that), so the comparisons see the branches."""
    model, _ = network_and_inputs(name)
    blocks = [m for m in model.modules() if isinstance(m, ResBlock)]
    assert blocks and all(b.conv1.weight.abs().max() > 0.1 * b.conv0.weight.abs().max() for b in blocks)


@slow
def test_predict_takes_the_optimized_module():
    """mcvd.predict interpolates with it as with the model (the condition
    cache at every step), to float32 accuracy after three DDIM steps (each
    step's error carried into the next: a tenfold margin)."""
    model, (_, _, cond) = network_and_inputs("spatin_small")
    fast, _, _ = optimized_and_eager("spatin_small")
    past, future = cond[:, :2].clamp(-1, 1), cond[:, 2:].clamp(-1, 1)
    videos = [mcvd.predict(m, past, 2, future=future, steps=3, generator=torch.Generator().manual_seed(0))
              for m in (model, fast)]
    assert videos[1].shape == (3, 2, 1, 32, 32)
    assert rel_err(videos[1], videos[0]) <= 10 * TOLERANCE[torch.float32]


@slow
def test_no_autograd_even_when_enabled():
    model, (x, t, cond) = network_and_inputs("spatin_small")
    fast, _, _ = optimized_and_eager("spatin_small")
    assert any(p.requires_grad for p in model.parameters())
    with torch.enable_grad():
        out = fast(x, t, cache=fast.condition(cond, MASK))
    assert not out.requires_grad and out.grad_fn is None


def test_the_same_model_device_and_dtype_give_the_same_module():
    model, _ = network_and_inputs("concat_small")
    fast = mcvd.optimize(model)
    assert mcvd.optimize(model, device="cpu", dtype=torch.float32) is fast
    assert fast.network is model and fast.config is model.config
    assert mcvd.optimize(model, dtype=torch.bfloat16) is not fast


def tiny(conditioning: str = "spatin", seed: int = 0) -> mcvd.MCVD:
    """One level (the fewest kernels to compile), SPATIN, random weights of a trained network's scale."""
    cfg = mcvd.ModelConfig(image_size=16, channels=1, num_frames=2, num_frames_cond=2, ngf=8, ch_mult=(1,),
                           num_res_blocks=1, attn_resolutions=(), n_head_channels=-1, dropout=0.0, spade_dim=8,
                           conditioning=conditioning)
    torch.manual_seed(seed)
    return randomized(mcvd.MCVD(cfg), seed)


def tiny_inputs(B: int = 2):
    gen = torch.Generator().manual_seed(2)
    return (torch.randn(B, 2, 1, 16, 16, generator=gen), torch.tensor([900, 10][:B]),
            torch.rand(B, 2, 1, 16, 16, generator=gen) * 2 - 1)


@slow
def test_bfloat16_within_its_stated_tolerance():
    """dtype=torch.bfloat16: float32 in and out, the network in bfloat16. Its
    error against the float32 network is the bfloat16 network's own (eager,
    the same weights rounded): at most TOLERANCE[bfloat16] and at most twice
    eager bfloat16's, which rounds at other points."""
    model = tiny()
    x, t, cond = tiny_inputs()
    fast = mcvd.optimize(model, dtype=torch.bfloat16)
    assert fast.network is not model and model.conv_in.weight.dtype == torch.float32  # the model is left alone
    with torch.no_grad():
        eager32 = model(x, t, cond)
        eager16 = copy.deepcopy(model).to(torch.bfloat16)(x.bfloat16(), t, cond.bfloat16())
    out = fast(x, t, cache=fast.condition(cond))
    assert out.dtype == torch.float32 and out.shape == x.shape
    own = rel_err(eager16, eager32)
    assert 1e-4 < rel_err(out, eager32) <= min(TOLERANCE[torch.bfloat16], 2 * own)


@slow
def test_bfloat16_on_a_reference_checkpoint_within_its_stated_tolerance():
    """What `--precision bf16` runs, on a reference checkpoint's weights (or weights of that scale): the
    network compiled in bfloat16 against the eager float32 one, every mask of MASK."""
    model, (x, t, cond) = network_and_inputs("concat_small")
    fast = mcvd.optimize(model, dtype=torch.bfloat16)
    with torch.no_grad():
        eager = model(x, t, cond, cond_mask=MASK)
    out = fast(x, t, cond, cond_mask=MASK)
    assert out.dtype == torch.float32 and out.shape == eager.shape
    assert 1e-4 < rel_err(out, eager) <= TOLERANCE[torch.bfloat16]


def test_bad_arguments_name_the_argument():
    model = tiny()
    with pytest.raises(TypeError, match="model: expected a mcvd.MCVD"):
        mcvd.optimize(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="dtype: expected a torch.dtype"):
        mcvd.optimize(model, dtype="float32")
    with pytest.raises(ValueError, match="dtype: expected one of"):
        mcvd.optimize(model, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"dtype: expected one of .* got torch.float64 \(the model's; pass dtype="):
        mcvd.optimize(copy.deepcopy(model).double())
    with pytest.raises(ValueError, match="device: expected a torch device"):
        mcvd.optimize(model, device="gpu0")
    with pytest.raises(ValueError, match="device: expected a CPU or CUDA device"):
        mcvd.optimize(model, device="meta")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device: cuda requested but torch sees no CUDA device"):
            mcvd.optimize(model, device="cuda")


def test_bad_inputs_get_the_networks_messages():
    """Inputs of the wrong shape reach the network as they are (the CPU's
    channels_last conversion takes 4-d tensors only), so the optimized module
    refuses them with the eager network's error; condition frames out of
    range, which the compiled network cannot read, are refused as eagerly."""
    model = tiny()
    fast = mcvd.optimize(model)
    x, t, cond = tiny_inputs(1)
    calls = {"x_t of rank 3": lambda f: f(x[:, 0, 0], t, cond),
             "cond with 2 channels": lambda f: f(x, t, cond.expand(-1, -1, 2, -1, -1)),
             "condition() with 2 channels": lambda f: f.condition(cond.expand(-1, -1, 2, -1, -1)),
             "cond in 0..255": lambda f: f(x, t, cond * 255),
             "cond with NaN": lambda f: f(x, t, cond * torch.nan),
             "cond with NaN, masked": lambda f: f(x, t, cond * torch.nan, torch.tensor([[True, False]]))}
    for name, call in calls.items():
        errors = []
        for f in (model, fast):
            with pytest.raises(ValueError) as info, torch.no_grad():
                call(f)
            errors.append(str(info.value).splitlines()[0])
        assert errors[0] == errors[1] and errors[0].split(":")[0] in ("x_t", "cond"), (name, errors)


def test_each_batch_size_compiles_its_own_graph():
    """Calls at two batch sizes, an input refused in between, then mcvd.predict at both (the condition
    cache): each new shape is a static graph of its own. Recompiled with dynamo's automatic dynamic
    shapes instead, the frozen graph failed inside inductor at the second prediction ("expected size
    4==4, stride 1==64")."""
    cfg = mcvd.ModelConfig(image_size=8, channels=1, num_frames=1, num_frames_cond=1, ngf=4, ch_mult=(1, 2),
                           num_res_blocks=1, attn_resolutions=(4,), n_head_channels=4)
    torch.manual_seed(0)
    model = randomized(mcvd.MCVD(cfg).eval())
    fast = mcvd.optimize(model)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for B in (1, 2):
            x, cond = torch.randn(B, 1, 1, 8, 8, generator=gen), torch.rand(B, 1, 1, 8, 8, generator=gen) * 2 - 1
            t = torch.tensor([900, 10][:B])
            assert rel_err(fast(x, t, cond), model(x, t, cond)) <= TOLERANCE[torch.float32]
            with pytest.raises(ValueError, match="x_t: expected"):
                fast(torch.randn(B, 1, 1, 16, 16), t, cond)
    for B in (1, 2):
        past = torch.rand(B, 1, 1, 8, 8, generator=gen) * 2 - 1
        videos = [mcvd.predict(m, past, 1, steps=2, generator=torch.Generator().manual_seed(0)) for m in (model, fast)]
        assert rel_err(videos[1], videos[0]) <= 10 * TOLERANCE[torch.float32]


def test_changed_weights_are_refused_and_optimized_again():
    """The compiled network holds the weights as constants: a module whose
    model's weights changed since refuses to run, and mcvd.optimize makes a
    new one (checked before anything compiles)."""
    model = tiny(seed=3)
    x, t, cond = tiny_inputs()
    fast = mcvd.optimize(model)
    with torch.no_grad():
        model.conv_out.weight.mul_(2)
    with pytest.raises(RuntimeError, match="weights changed since mcvd.optimize"):
        fast(x, t, cond)
    with pytest.raises(RuntimeError, match="weights changed since mcvd.optimize"):
        fast.condition(cond)
    again = mcvd.optimize(model)
    assert again is not fast and mcvd.optimize(model) is again


def test_moving_or_casting_is_refused():
    """The compiled code holds the weights of one device and dtype: .to()
    and its kin raise, naming what to call instead, and leave the weights."""
    model = tiny(seed=7)
    fast = mcvd.optimize(model)
    before = model.conv_in.weight.clone()
    for convert in (lambda m: m.to(torch.float64), lambda m: m.half(), lambda m: m.to("cpu"), lambda m: m.float()):
        with pytest.raises(RuntimeError, match=r"cannot be moved or cast.*mcvd.optimize\(model, device=\.\.\., "
                                               r"dtype=\.\.\.\)"):
            convert(fast)
    assert fast.network.conv_in.weight.dtype == torch.float32
    assert torch.equal(model.conv_in.weight, before)


def test_a_cache_of_another_network_is_refused():
    """The cache's network and weights are checked eagerly, before the compiled forward."""
    model, other = tiny(seed=4), tiny(seed=5)
    x, t, cond = tiny_inputs()
    fast = mcvd.optimize(model)
    with torch.no_grad():
        foreign = other.condition(cond)
    with pytest.raises(ValueError, match="cache: built by another network"):
        fast(x, t, cache=foreign)
    half = mcvd.optimize(model, dtype=torch.bfloat16)
    with torch.no_grad():
        own = model.condition(cond)
    with pytest.raises(ValueError, match="cache: built by the model mcvd.optimize was given"):
        half(x, t, cache=own)
    with torch.no_grad():
        stale = fast.condition(cond)
        model.norm_out.spatin.shared.weight.add_(0)  # a new version, as any in-place update makes
    fresh = mcvd.optimize(model)
    with pytest.raises(ValueError, match="cache: the network's weights changed since it was built"):
        fresh(x, t, cache=stale)


def test_a_model_and_its_module_are_freed_together():
    """The module runs the model itself (same device and dtype): the two refer to each other, and are freed
    once neither is used; copies and pickles of the model leave its modules behind."""
    import gc
    import io
    import weakref

    model = tiny(seed=8)
    fast = mcvd.optimize(model)
    assert fast.network is model
    assert mcvd.optimize(copy.deepcopy(model)) is not fast  # a copy has no modules of its own yet
    buffer = io.BytesIO()
    torch.save(model, buffer)  # a whole-module pickle takes no compiled code along
    assert torch.load(io.BytesIO(buffer.getvalue()), weights_only=False).__dict__["_mcvd_optimized"] == {}
    gone = weakref.ref(model)
    del model, fast
    gc.collect()
    assert gone() is None


def test_a_model_put_in_training_mode_is_refused_until_eval():
    """The compiled network runs in eval mode (no dropout): its model switched to training since is refused,
    naming the fix; mcvd.optimize of a model in training mode compiles an eval copy."""
    model = tiny(seed=9)
    fast = mcvd.optimize(model)
    cond = tiny_inputs()[2]
    model.train()
    with pytest.raises(RuntimeError, match=r"model: in training mode since mcvd.optimize compiled it.*model.eval\(\)"):
        fast.condition(cond)
    copy_ = mcvd.optimize(model)
    assert copy_ is not fast and copy_.network is not model and not copy_.network.training
    model.eval()
    assert fast.condition(cond) is not None


def test_a_copy_outlives_its_model():
    """A module that runs a converted copy keeps working once the model it
    was made from is gone (its own weights are what it checks then)."""
    import gc

    fast = mcvd.optimize(tiny(seed=6), dtype=torch.bfloat16)
    gc.collect()
    assert fast._source() is None
    cache = fast.condition(tiny_inputs()[2])  # eager: nothing compiles
    assert cache.dtype == torch.bfloat16 and cache.model is fast.network


# --- on a CUDA device ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def full_float32():
    """cuDNN and cuBLAS in full float32 (cuDNN's convolutions default to TF32 on tensor cores)."""
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


@functools.cache
def cuda_network_and_inputs(name: str):
    model, inputs = network_and_inputs(name)
    return copy.deepcopy(model).cuda(), tuple(v.cuda() for v in inputs)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("name", list(CACHED))
def test_optimized_on_cuda_within_its_stated_tolerance(name, dtype):
    """float32 runs TF32 on the tensor cores, bfloat16 the network in
    bfloat16: each against the float32 network in full float32, within
    tolerance(cuda, dtype), and not exact (the fast path did run)."""
    model, (x, t, cond) = cuda_network_and_inputs(name)
    fast = mcvd.optimize(model, dtype=dtype)
    with torch.no_grad(), full_float32():
        eager = model(x, t, cond, cond_mask=MASK.cuda())
    if CACHED[name]:
        out = fast(x, t, cache=fast.condition(cond, MASK.cuda()))
    else:
        out = fast(x, t, cond, cond_mask=MASK.cuda())
    assert out.dtype == torch.float32 and out.device == x.device
    err = rel_err(out, eager)
    print(f"{name} {dtype}: relative error {err:.2e}")
    assert 1e-6 < err <= tolerance("cuda", dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_cuda_graph_replays_the_optimized_module(dtype):
    """mcvd.predict with cuda_graph=True captures the compiled module's
    calls: the same frames as the eager network sampled without a graph,
    to the module's tolerance (ten times: three steps carry the error). DDIM
    draws only x_T, before the graph, so both runs start from the same one;
    another seed's x_T, copied into the captured input, gives other frames."""
    model, (_, _, cond) = cuda_network_and_inputs("spatin_small")
    fast = mcvd.optimize(model, dtype=dtype)
    past, future = cond[:, :2].clamp(-1, 1), cond[:, 2:].clamp(-1, 1)

    def sample(m, graph, seed=0):
        return mcvd.predict(m, past, 2, future=future, steps=3, method="ddim", cuda_graph=graph,
                            generator=torch.Generator("cuda").manual_seed(seed))
    with full_float32():
        eager = sample(model, False)
    graphed = sample(fast, True)
    assert graphed.shape == eager.shape == (3, 2, 1, 32, 32)
    assert rel_err(graphed, eager) <= 10 * tolerance("cuda", dtype)
    assert rel_err(sample(fast, True, seed=1), graphed) > 0.1
