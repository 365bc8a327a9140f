"""`mcvd.optimize`: the MCVD network's fastest exact inference path on a device.

The CPU path is torch.compile (inductor) with freezing: the weights become
constants of the compiled graph, every convolution is pre-packed for
oneDNN (`mkldnn._convolution_pointwise`, with bias and the following
pointwise op fused where the graph allows), and the fused C++ ops
(spatin_norm, attention) run between them as opaque ops. At batch 1
eager PyTorch's heuristics send many of this network's convolutions to
`_slow_conv2d_forward` (im2col + GEMM): every 1x1 skip, the 3x3 ones at
8 x 8, conv_out and the concat network's split conv_in in the SMMNIST
preset; 39 of the 43 at the demo's cpu size. Frozen, all of them run on
oneDNN. Only the FIR
up-sampling (a transposed depthwise convolution, which oneDNN's pass does
not pack) stays on ATen's own kernel. The network is traced channels_last
(its inputs converted, so every activation follows): inductor lays the
oneDNN convolutions' activations out channels_last on the CPU whatever the
trace, and the fused spatin_norm takes and returns that layout, where a
contiguous trace made inductor copy each norm's input and output between
the two layouts (67 norms at 64 x 64 for the SMMNIST preset): 3.8% less
time at batch 1 on one thread (150.0 -> 144.3 ms, concat), 6.2% on two
(81.3 -> 76.2 ms), 4.4% for SPATIN (382.4 -> 365.6 ms), 6.6% in bfloat16
(85.4 -> 79.8 ms, concat; interleaved medians, docs/optimize.md).

Inductor's C++ wrapper (cpp_wrapper) makes the kernel calls of a forward
from compiled C++ instead of Python: 3.8% less time at batch 1 for the
SMMNIST concat preset, 1.3% with SPATIN (measured after the table below;
benchmarks/results/cpu_e2e_cpp_wrapper.md).

Freezing is switched on with `torch._inductor.config.patch(freezing=True)`
around every call of the compiled network (torch 2.13 compiles at the
first call, and at any recompile, e.g. for a new batch size; its
`torch.compile(options={"freezing": True})` does not freeze).

Measured: the forward with a condition cache (what a sampler calls at
each step), float32, batch 1, torch.set_num_threads(1), medians of
interleaved rounds on a shared 2-core AVX-512 CPU (docs/optimize.md):

| network                          | eager    | optimized | speed-up |
|----------------------------------|----------|-----------|----------|
| SMMNIST preset, concat (64 x 64) | 529.8 ms | 448.5 ms  | 1.18x    |
| SMMNIST preset, SPATIN (64 x 64) | 439.4 ms | 374.1 ms  | 1.17x    |
| demo cpu size, concat (32 x 32)  | 31.4 ms  | 25.5 ms   | 1.23x    |

The gain is what eager loses off oneDNN plus the fused element-wise work:
the oneDNN convolutions themselves, most of the FLOPs, run the same
kernels either way. On a CPU with AMX, dtype=torch.bfloat16 runs them on
its bfloat16 units: the SMMNIST concat preset in 144 ms against eager
float32's 327 ms (2.27x, relative error 5.6e-3).

On a CUDA GPU: TF32 tensor-core matmuls and convolutions for float32 (flags
set around each call only), bfloat16 or float16 weights for `dtype=`, and
torch.compile's default mode with freezing (max-autotune's template search
takes minutes per shape), the spatin_norm and attention calls compiled from
their PyTorch reference (inductor fuses them with their neighbours; the
opaque CUDA kernels cost their own launches); CUDA graphs of the whole
denoising loop are the sampler's (`mcvd.predict(..., cuda_graph=True)`),
which replays the compiled kernels. On an H200, SMMNIST preset, B = 1, 100
DDIM steps with the cache and a CUDA graph: eager 258 ms; float32 174 ms
(199 ms with the CUDA kernels); bfloat16 145 ms (179 ms)
(benchmarks/results/h200_levers.md).
"""
from __future__ import annotations

import copy
import sys
import threading
import time
import types
import weakref
from contextlib import ExitStack, contextmanager, nullcontext

import torch
import torch.nn as nn

from .condition import ConditionCache, weights_version
from .config import ModelConfig
from .devices import parse_device
from .network import MCVD
from .precision import warn_if_slow_on_cpu

# Relative error of the optimized network against eager in each dtype
# (||out - eager|| / ||eager||), what tests/nn/test_optimize.py checks.
# float32: only the summation order of the convolutions differs (oneDNN's
# algorithms against ATen's), ~1e-6 measured over ~60 layers. bfloat16 and
# float16: the network itself runs in that dtype (8 and 11 mantissa bits),
# so the bound is the low-precision eager network's own error against
# float32 (~2e-2 for bfloat16) with room for a different rounding order.
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 6e-2, torch.float16: 1e-2}
DTYPES = tuple(TOLERANCE)
# float32 on a CUDA device runs its matrix products and convolutions in TF32
# (10 mantissa bits, like float16's), so its bound is float16's.
TF32_TOLERANCE = 1e-2


def tolerance(device: torch.device | str, dtype: torch.dtype) -> float:
    """The relative error bound of `optimize(model, device=device, dtype=dtype)` against the float32 network."""
    if torch.device(device).type == "cuda" and dtype == torch.float32:
        return TF32_TOLERANCE
    return TOLERANCE[dtype]

# The ops' backend inside the compiled network on a GPU: their PyTorch reference, which inductor
# compiles into its own kernels fused with their neighbours, where the opaque CUDA kernels cost
# their own launches: 409 kernels a step instead of 580, 1.14-1.23x faster at batch 1 on an H200
# (benchmarks/results/h200_levers.md). None keeps the model's own.
CUDA_OPS_BACKEND: str | None = "reference"

# The network traced channels_last on the CPU (module docstring); False traces it contiguous, the
# layout it had before, kept to measure one against the other.
CPU_CHANNELS_LAST = True

# Inductor's C++ wrapper on the CPU, with the package's ops called from it: checked (tests and
# benchmarks) with torch 2.13; an older torch keeps the Python wrapper.
CPU_CPP_WRAPPER = torch.torch_version.TorchVersion(torch.__version__) >= "2.13"

_lock = threading.Lock()


class _Optimized(dict):
    """A model's optimized modules, {(device, dtype): OptimizedMCVD}, kept on the model itself rather than
    in a table keyed by it: a module that runs the model refers back to it, and where the table's entry
    would then keep the model alive for good, a cycle through the model is one the garbage collector frees.
    Copies and pickles of the model start without them."""

    def __deepcopy__(self, memo):
        return _Optimized()

    def __reduce__(self):
        return _Optimized, ()


_ENTRIES = "_mcvd_optimized"  # the model's attribute holding its _Optimized


def _all_versions(module: nn.Module) -> tuple[int, ...]:
    return weights_version([*module.parameters(), *module.buffers()])


def _own_code(fn):
    """`fn` with a code object of its own. Dynamo keeps compiled graphs, and
    its recompile limit, per code object: each optimized module gets its own
    rather than one shared by every module, whose frozen weights differ (a
    module made again after its model's weights changed included)."""
    return types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)


class OptimizedMCVD(nn.Module):
    """An MCVD network compiled for inference on one device and dtype; made by
    `mcvd.optimize`. Same call signature as `mcvd.MCVD`: `forward(x_t, t,
    cond=None, cond_mask=None, *, cache=None)` and `condition(cond,
    cond_mask)`, and `.config`; no autograd.

    Inputs are taken in their own dtype (the model's, usually float32) and
    computed in `dtype`: eps comes back in x_t's dtype.

    Attributes:
        network: the MCVD network it runs (the model itself, or a copy on
            `device` in `dtype` when they differ from the model's).
        device, dtype: where and in what it computes.
    """

    def __init__(self, model: MCVD, network: MCVD, device: torch.device, dtype: torch.dtype):
        super().__init__()
        self.network = network
        self.device, self.dtype = device, dtype
        # Not submodules: the source model (a converted copy may stand in for it), the compiled wrapper.
        self.__dict__["_source"] = weakref.ref(model)
        self.__dict__["_versions"] = (_all_versions(model), _all_versions(network))
        # The layout the network is traced in, which condition() gives the cache's maps too.
        self.__dict__["_trace_channels_last"] = device.type == "cpu" and CPU_CHANNELS_LAST
        self.__dict__["_compiled"] = self._compile()
        self.__dict__["_compiled_shapes"] = set()

    @property
    def config(self) -> ModelConfig:
        return self.network.config

    def extra_repr(self) -> str:
        return f"device={self.device}, dtype={self.dtype}"

    def _apply(self, fn, recurse=True):
        # .to(), .cuda(), .half(), .float() ... all come here. The compiled code holds the weights as
        # constants of one device and dtype: moving or casting the parameters would leave it running the old
        # ones, so every conversion is refused instead.
        raise RuntimeError(f"OptimizedMCVD: compiled for {self.device.type} {str(self.dtype)[6:]} with the weights "
                           f"as constants, so it cannot be moved or cast (.to, .cuda, .half, ...); call "
                           f"mcvd.optimize(model, device=..., dtype=...) for another device or dtype")

    # --- compilation ----------------------------------------------------

    def _compile(self):
        network, channels_last = self.network, self._trace_channels_last

        def run(x_t, t, cond, cond_mask, cache):
            if channels_last:
                # Inductor lays the frozen oneDNN convolutions' activations out channels_last on the CPU. Traced
                # channels_last from the input on, the fused norms take and return that layout too; traced
                # contiguous, inductor copied every norm's input and output between the two layouts. (Inputs
                # of another rank go as they are, for the network to refuse with its own message.)
                x_t = _channels_last(x_t)
                cond = _channels_last(cond)
            return network(x_t, t, cond, cond_mask, cache=cache).contiguous()

        # The default mode on a GPU too: max-autotune's search over matmul and convolution
        # templates takes minutes per input shape, and CUDA graphs are the sampler's (the whole loop).
        # dynamic=False: a static graph per input shape. Dynamo's automatic dynamic shapes recompiled the
        # frozen graph symbolically at a second batch size, and on the CPU that graph failed in a oneDNN
        # convolution's stride check (tests/nn/test_optimize.py, test_each_batch_size_compiles_its_own_graph).
        return torch.compile(_own_code(run), dynamic=False)

    @contextmanager
    def _settings(self):
        """Freezing on for any compilation this call triggers (and on the CPU
        inductor's C++ wrapper); on a GPU, TF32 for float32 matmuls and
        convolutions, for this call only."""
        import torch._inductor.config as inductor_config

        with ExitStack() as stack:
            stack.enter_context(torch.no_grad())
            # The C++ wrapper calls the ~300 kernels of a forward without Python in between (gain: module docstring).
            cpp_wrapper = self.device.type == "cpu" and CPU_CPP_WRAPPER
            stack.enter_context(inductor_config.patch(freezing=True, cpp_wrapper=cpp_wrapper))
            if self.device.type == "cuda":
                stack.enter_context(_tf32())
            yield

    def _check_weights(self) -> None:
        if self.network.training:  # the model itself, put in training mode since: dropout would come on
            raise RuntimeError("model: in training mode since mcvd.optimize compiled it, which runs it in eval mode; "
                               "call model.eval() first, or mcvd.optimize(model) for a copy in eval mode")
        source = self._source()  # None once a model that runs as a copy is gone: the copy's weights still count
        versions = (self._versions[0] if source is None else _all_versions(source), _all_versions(self.network))
        if versions != self._versions:
            raise RuntimeError("model: its weights changed since mcvd.optimize compiled it (the compiled network "
                               "holds them as constants); call mcvd.optimize(model) again")

    def _stacked(self, v: torch.Tensor) -> torch.Tensor:
        """[B, T, C, H, W] -> [B, T*C, H, W] in `dtype`; any other shape as it is, for the network to refuse."""
        if v.dim() == 5 and v.shape[2] == self.config.channels:
            v = v.flatten(1, 2)
        return v.to(self.dtype)

    def _check_cond_values(self, cond: torch.Tensor, cond_mask) -> None:
        """The condition frames' range, which the network checks eagerly but not while compiled (reading
        values while tracing): checked here, masked blocks excepted, where cond and cond_mask have the shapes
        the network takes (others reach it as they are, for its own message)."""
        cfg = self.config
        if cond.dim() != 4 or cond.shape[1] != cfg.num_cond_frames * cfg.channels:
            return
        if cond_mask is not None:
            if not (isinstance(cond_mask, torch.Tensor) and cond_mask.dtype == torch.bool
                    and tuple(cond_mask.shape) == (cond.shape[0], 2) and cond_mask.device == cond.device):
                return
            cond = self.network._masked(cond, cond_mask)
        self.network._check_cond_range(cond)

    # --- the network's interface -----------------------------------------

    def condition(self, cond: torch.Tensor, cond_mask: torch.Tensor | None = None) -> ConditionCache:
        """`MCVD.condition` of the network (eager: once per sampling block),
        with cond cast to `dtype`; for `forward(..., cache=...)` of this module."""
        self._check_weights()
        if isinstance(cond, torch.Tensor) and cond.is_floating_point():
            cond = self._stacked(cond)
            if self._trace_channels_last:
                cond = _channels_last(cond)
        with torch.no_grad(), (_tf32() if self.device.type == "cuda" else nullcontext()):
            return self.network.condition(cond, cond_mask)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None,
                cond_mask: torch.Tensor | None = None, *, cache: ConditionCache | None = None) -> torch.Tensor:
        """`MCVD.forward`, compiled: eps for x_t, in x_t's dtype. The first call
        for a new input shape compiles (a log line on stderr), in every process:
        inductor does not cache a frozen graph whose weights it pre-packed for
        oneDNN ("mkldnn tensors unpickleable"), only its generated kernels. The cache's network
        and weights are checked here, eagerly, as the eager network does."""
        self._check_weights()
        if not isinstance(x_t, torch.Tensor) or not x_t.is_floating_point():
            raise TypeError(f"x_t: expected a float tensor, got {getattr(x_t, 'dtype', type(x_t).__name__)}")
        # Frames stacked in channels ([B, T*C, H, W]) and in `dtype`: one compilation for either layout.
        x = self._stacked(x_t)
        if isinstance(cond, torch.Tensor) and cond.is_floating_point():
            cond = self._stacked(cond)
            self._check_cond_values(cond, cond_mask)
        if cache is not None:
            if isinstance(cache, ConditionCache) and cache.model is self._source() and cache.model is not self.network:
                raise ValueError("cache: built by the model mcvd.optimize was given, which this module runs as a copy "
                                 f"in {self.dtype} on {self.device}; build it with this module's condition()")
            # Identity and weight versions: the compiled forward checks batch, dtype and device only.
            self.network._check_cache(cache, x)
        key = (tuple(x.shape), None if cond is None else tuple(cond.shape), cache is None)
        first = key not in self._compiled_shapes
        if first:
            print(f"mcvd.optimize: compiling the network for {self.device.type} {str(self.dtype)[6:]}, input "
                  f"{list(x.shape)} (first call for this shape in this process)", file=sys.stderr,
                  flush=True)
            start = time.perf_counter()
        with self._settings():
            eps = self._compiled(x, t, cond, cond_mask, cache)
        if first:
            self._compiled_shapes.add(key)
            print(f"mcvd.optimize: compiled in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
        return eps.view(x_t.shape).to(x_t.dtype)


def _channels_last(v):
    """A [B, C, H, W] tensor in channels_last; anything else as it is."""
    return v.contiguous(memory_format=torch.channels_last) if isinstance(v, torch.Tensor) and v.dim() == 4 else v


@contextmanager
def _tf32():
    """TF32 tensor-core math for float32 matmuls and cuDNN convolutions, restored after."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def optimize(model: MCVD, *, device: torch.device | str | None = None,
             dtype: torch.dtype | None = None) -> OptimizedMCVD:
    """The MCVD network compiled for fast inference, computing the same function.

    CPU: torch.compile with inductor's freezing - weights folded in as
    constants, every convolution pre-packed for oneDNN (eager runs most of
    them on the slow im2col path), bias and pointwise ops fused into them;
    the fused C++ norm and attention ops in between. GPU: TF32 tensor cores
    for float32 (set around each call only), bfloat16/float16 weights with
    `dtype`, inductor with freezing, the norm and attention compiled from
    their reference by inductor (no CUDA graphs of its own:
    `mcvd.predict(..., cuda_graph=True)` captures the whole loop). See `mcvd.nn.optimize` for the measured speed-ups.

    Compiles at the first call for each input shape in each process
    (stderr says so; minutes on a small CPU for a large network): on the CPU
    inductor caches only the generated kernels between processes, not the
    frozen graph with its oneDNN-packed weights. The same (model, device, dtype) gives back the same module
    while the model's weights are unchanged; a module whose model's
    weights changed since, or that runs the model itself and finds it put in
    training mode, refuses to run (RuntimeError). The modules are kept on the
    model, and freed with it.

    Accuracy against the eager model (relative L2 error of eps): at most
    1e-4 in float32 (on a GPU, where it is TF32, 1e-2); bfloat16 at most
    6e-2 and float16 1e-2: the network then runs in that precision
    (`tolerance(device, dtype)`).

    Args:
        model: a `mcvd.MCVD` network (its mode is left alone; the optimized
            module always runs it as in eval mode, without autograd).
        device: where to run (default: the model's). A model elsewhere is
            copied there; the model itself is not moved.
        dtype: torch.float32, torch.bfloat16 or torch.float16 (default: the
            model's). Inputs are cast to it and eps cast back to x_t's dtype.
    Returns:
        an `OptimizedMCVD`: `forward(x_t, t, cond=None, cond_mask=None, *,
        cache=None)`, `condition(cond, cond_mask)` and `.config`, as MCVD's,
        so `mcvd.predict` and the samplers take it in place of the model.
    """
    if not isinstance(model, MCVD):
        raise TypeError(f"model: expected a mcvd.MCVD network, got {type(model).__name__}")
    weight = model.conv_in.weight
    if device is None:
        device = weight.device
    else:
        device = parse_device(device)
    given = dtype is not None
    if dtype is None:
        dtype = weight.dtype
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype: expected a torch.dtype (torch.float32, torch.bfloat16, torch.float16), "
                        f"got {type(dtype).__name__}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype: expected one of {', '.join(map(str, DTYPES))}, got {dtype}"
                         + ("" if given else " (the model's; pass dtype= to compile it in one of those)"))
    warn_if_slow_on_cpu(device, dtype, f"mcvd.optimize(dtype={dtype})")

    key = (device, dtype)
    with _lock:
        entries = model.__dict__.setdefault(_ENTRIES, _Optimized())
        found = entries.get(key)
        if found is not None:
            try:
                found._check_weights()
                return found
            except RuntimeError:
                pass  # weights changed: freeze them again
        # A copy when the model is elsewhere, in another dtype, in training mode or needs other op backends:
        # the model itself is left as it is. Eval mode on the network the compiled code reads (dropout off).
        ops = CUDA_OPS_BACKEND if device.type == "cuda" else None
        if (weight.device, weight.dtype) == key and not model.training and ops is None:
            network = model
        else:
            network = copy.deepcopy(model).to(device=device, dtype=dtype).eval()
            if ops is not None:
                network.set_backend(ops)
        optimized = OptimizedMCVD(model, network, device, dtype)
        entries[key] = optimized
        return optimized
