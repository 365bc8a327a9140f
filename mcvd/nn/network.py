"""The MCVD denoiser eps_theta(x_t | m_p * p, m_f * f, t) (Voleti et al. 2022, eq. 3):
the public code's U-Net (`UNetMore_DDPM`, an NCSN++-style network with
BigGAN-style ResBlocks) with concat or SPATIN conditioning.

Time: the network embeds the reference code's step index s = T - 1 - t
(its index 0 is the noisiest step) while its API takes DDPM t; so a
converted checkpoint computes the reference network's function exactly,
and a model trained here sees the same features.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from mcvd import ops
from mcvd.ops._backend import BACKENDS
from mcvd.schedule import Schedule, edm_scales, eps_from_prediction

from .blocks import GROUPNORM_EPS, SPATIN_EPS, AttnBlock, Norm, ResBlock, SpatinMaps, conv2d, linear
from .condition import ConditionCache, weights_version
from .config import ModelConfig, level_channels, level_resolutions
from .data_range import check_data_range
from .layers import timestep_embedding


class DownLevel(nn.Module):
    """One encoder level: `blocks` (each optionally followed by `attn[i]`), then
    an optional down-sampling ResBlock. Every output is kept as a skip."""

    def __init__(self, blocks: list[ResBlock], attn: list[AttnBlock], downsample: ResBlock | None):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attn)
        self.downsample = downsample

    def forward(self, h, emb, cond, skips: list[torch.Tensor]):
        for i, block in enumerate(self.blocks):
            h = block(h, emb, cond)
            if len(self.attn):
                h = self.attn[i](h)
            skips.append(h)
        if self.downsample is not None:
            h = self.downsample(h, emb, cond)
            skips.append(h)
        return h


class UpLevel(nn.Module):
    """One decoder level: `blocks` each eating one skip (concatenated in
    channels), an optional `attn`, then an optional up-sampling ResBlock."""

    def __init__(self, blocks: list[ResBlock], attn: AttnBlock | None, upsample: ResBlock | None):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.attn = attn
        self.upsample = upsample

    def forward(self, h, emb, cond, skips: list[torch.Tensor]):
        for block in self.blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb, cond)
        if self.attn is not None:
            h = self.attn(h)
        if self.upsample is not None:
            h = self.upsample(h, emb, cond)
        return h


class MCVD(nn.Module):
    """The MCVD noise-prediction network.

    Layout (module names): `time_mlp` (sinusoidal embedding -> Linear -> SiLU ->
    Linear), `mask_embed` (cond_emb only), `conv_in`, `down[i]` per level,
    `mid` (ResBlock, AttnBlock, ResBlock), `up[j]` per level from the deepest,
    `norm_out`, `conv_out`.

    Args:
        config: the ModelConfig.
        backend: op backend for every spatin_norm and attention call (None =
            auto, or MCVD_BACKEND); change it later with `set_backend`.
    """

    def __init__(self, config: ModelConfig, *, backend: str | None = None):
        super().__init__()
        if not isinstance(config, ModelConfig):
            raise TypeError(f"config: expected a mcvd.ModelConfig, got {type(config).__name__}")
        _check_backend_name(backend)
        self.config = cfg = config
        nf, C = cfg.ngf, cfg.channels
        chans, resolutions = level_channels(cfg), level_resolutions(cfg)
        levels = len(chans)

        self.time_mlp = nn.Sequential(linear(nf, 4 * nf), nn.SiLU(), linear(4 * nf, 4 * nf))
        emb_dim = 4 * nf
        self.mask_embed = None
        if cfg.cond_emb:
            # Indexed by "past frames given" (0 or 1), as in the reference code.
            self.mask_embed = nn.Embedding(2, nf // 2)
            emb_dim += nf // 2

        spatin = (C * cfg.num_cond_frames, cfg.spade_dim) if cfg.conditioning == "spatin" else None
        in_frames = cfg.num_frames + (cfg.num_cond_frames if spatin is None else 0)

        def block(i, o=None, resample=None):
            return ResBlock(i, o, emb_dim=emb_dim, dropout=cfg.dropout, resample=resample, spatin=spatin,
                            backend=backend)

        def attn(ch):
            return AttnBlock(ch, cfg.heads(ch), backend=backend)

        self.conv_in = conv2d(C * in_frames, nf, 3)
        skip_ch, ch = [nf], nf
        self.down = nn.ModuleList()
        for i in range(levels):
            blocks, attns = [], []
            for _ in range(cfg.num_res_blocks):
                blocks.append(block(ch, chans[i]))
                ch = chans[i]
                if resolutions[i] in cfg.attn_resolutions:
                    attns.append(attn(ch))
                skip_ch.append(ch)
            downsample = block(ch, resample="down") if i < levels - 1 else None
            if downsample is not None:
                skip_ch.append(ch)
            self.down.append(DownLevel(blocks, attns, downsample))

        self.mid = nn.ModuleList([block(ch), attn(ch), block(ch)])

        self.up = nn.ModuleList()
        for i in reversed(range(levels)):
            blocks = []
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(block(ch + skip_ch.pop(), chans[i]))
                ch = chans[i]
            level_attn = attn(ch) if resolutions[i] in cfg.attn_resolutions else None
            upsample = block(ch, resample="up") if i > 0 else None
            self.up.append(UpLevel(blocks, level_attn, upsample))
        assert not skip_ch

        if spatin is None:
            self.norm_out = Norm(ch, eps=GROUPNORM_EPS, affine=True, backend=backend)
        else:
            self.norm_out = Norm(ch, eps=SPATIN_EPS, spatin=spatin, backend=backend)
        self.conv_out = conv2d(ch, C * cfg.num_frames, 3, init_scale=0.0)
        if cfg.prediction != "eps":
            # sqrt(abar_t), sqrt(1 - abar_t) to turn an x0 or v prediction into eps: buffers, so they follow
            # the model's device (and dtype); not in the state dict, which stays the reference code's.
            schedule = Schedule.named(cfg.schedule, cfg.num_timesteps)
            a, s = schedule.signal_noise()
            self.register_buffer("signal_scale", a, persistent=False)
            self.register_buffer("noise_scale", s, persistent=False)
            if cfg.prediction == "edm":
                # EDM's c_in: x_t scaled to the unit variance the network reads at every noise level.
                abar = schedule.alphas_cumprod
                c_in = edm_scales(abar.sqrt(), (1 - abar).sqrt(), cfg.sigma_data)[0]
                self.register_buffer("input_scale", c_in.float(), persistent=False)

    def set_backend(self, backend: str | None) -> MCVD:
        """Run every spatin_norm and attention call on `backend` (None = auto)."""
        _check_backend_name(backend)
        for m in self.modules():
            if isinstance(m, (Norm, AttnBlock)):
                m.backend = backend
        return self

    # --- inputs ---------------------------------------------------------

    def _stacked(self, v: torch.Tensor, name: str, frames: int) -> torch.Tensor:
        """[B, frames, C, H, W] or [B, frames*C, H, W] -> [B, frames*C, H, W], checked."""
        cfg = self.config
        C, S = cfg.channels, cfg.image_size
        layouts = f"[B, {frames}, {C}, {S}, {S}] or stacked [B, {frames * C}, {S}, {S}]"
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"{name}: expected a tensor {layouts}, got {type(v).__name__}")
        if v.dim() == 5 and tuple(v.shape[1:]) == (frames, C, S, S):
            return v.flatten(1, 2)
        if v.dim() == 4 and tuple(v.shape[1:]) == (frames * C, S, S):
            return v
        raise ValueError(f"{name}: expected {layouts}, got shape {list(v.shape)}")

    def _check_t(self, t, x: torch.Tensor) -> None:
        B, T = x.shape[0], self.config.num_timesteps
        # int64 or int32 only: T - 1 - t wraps around in uint8, 999 overflows int8, and a uint8 index is a mask.
        if not isinstance(t, torch.Tensor) or t.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"t: expected an int64 (or int32) tensor [B] of DDPM steps, got "
                            f"{getattr(t, 'dtype', type(t))}")
        if tuple(t.shape) != (B,):
            raise ValueError(f"t: expected shape [{B}] (one step per sample), got {list(t.shape)}")
        if t.device != x.device:
            raise ValueError(f"t: expected device {x.device} (the device of x_t), got {t.device}")
        # Reading t's values would make the host wait on a GPU (and break CUDA
        # graph capture), so the range is checked on CPU tensors only.
        if t.device.type == "cpu" and not torch.compiler.is_compiling():
            lo, hi = torch.aminmax(t)
            if lo < 0 or hi >= T:
                raise ValueError(f"t: expected DDPM steps in [0, {T - 1}], got values in [{int(lo)}, {int(hi)}]")

    def _check_cond_range(self, cond: torch.Tensor) -> None:
        """The condition frames are data, in [-1, 1] (x_t is noisy data,
        unbounded); checked after masking, where that reads no device value,
        as t's range is."""
        if cond.device.type == "cpu" and not torch.compiler.is_compiling():
            check_data_range(cond, "cond")

    def _check_mask(self, cond_mask, B: int, x: torch.Tensor, name: str = "x_t") -> None:
        if not isinstance(cond_mask, torch.Tensor) or cond_mask.dtype != torch.bool:
            raise TypeError(f"cond_mask: expected a bool tensor [B, 2] (past given, future given) or None, "
                            f"got {getattr(cond_mask, 'dtype', type(cond_mask).__name__)}")
        if tuple(cond_mask.shape) != (B, 2):
            raise ValueError(f"cond_mask: expected shape [{B}, 2] (past given, future given), "
                             f"got {list(cond_mask.shape)}")
        if cond_mask.device != x.device:
            raise ValueError(f"cond_mask: expected device {x.device} (the device of {name}), got {cond_mask.device}")

    # --- forward --------------------------------------------------------

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None,
                cond_mask: torch.Tensor | None = None, *, cache: ConditionCache | None = None,
                raw: bool = False) -> torch.Tensor:
        """Predict the noise eps in x_t.

        Args:
            x_t: noisy current frames, [B, k, C, H, W] or stacked frame-major
                [B, k*C, H, W], float, the model's dtype; H = W = image_size.
            t: int64 [B], DDPM steps in 0..T-1 (larger is noisier).
            cond: past then future frames, [B, p+f, C, H, W] or stacked
                [B, (p+f)*C, H, W], x_t's dtype, in [-1, 1] (checked on the
                CPU, masked frames excepted); None exactly when p + f == 0.
                To mask a block, keep cond and set cond_mask.
            cond_mask: bool [B, 2] (column 0: past given, column 1: future
                given) or None (all given). Frames of a masked block are
                replaced by zeros; with cond_emb, column 0 also selects the
                mask embedding.
            cache: what `condition(cond, cond_mask)` computed from the
                condition frames, in place of cond and cond_mask (both then
                None): the same eps - bit for bit with SPATIN, up to float
                summation order in conv_in with concat - without recomputing
                it. Built by this network for x_t's batch size, dtype and
                device, with the weights unchanged since.
            raw: return what the network predicts (`config.prediction`: eps,
                x0, v or EDM's F), as training compares it with its target, instead
                of the eps it implies (mcvd.schedule.eps_from_prediction).
        Returns:
            eps (or with raw=True the prediction): shaped like x_t.
        """
        cfg = self.config
        p, f = cfg.num_frames_cond, cfg.num_frames_future
        x = self._stacked(x_t, "x_t", cfg.num_frames)
        B = x.shape[0]
        if B < 1:
            raise ValueError(f"x_t: expected at least one sample (B >= 1), got shape {list(x_t.shape)}")
        if x.dtype != self.conv_in.weight.dtype:
            raise TypeError(f"x_t: expected dtype {self.conv_in.weight.dtype} (the model's), got {x.dtype}")
        if x.device != self.conv_in.weight.device:
            raise ValueError(f"x_t: expected device {self.conv_in.weight.device} (the model's), got {x.device}")
        self._check_t(t, x)
        if cfg.prediction == "edm":
            x = x * self.input_scale[t].to(x.dtype).view(-1, 1, 1, 1)
        if cache is not None:
            if cond is not None or cond_mask is not None:
                raise ValueError("cond, cond_mask: expected None with cache= (the cache holds what the condition "
                                 "frames contribute); pass either cond and cond_mask or cache")
            self._check_cache(cache, x)
        elif cfg.num_cond_frames == 0:
            if cond is not None:
                raise ValueError("cond: this model has no condition frames (num_frames_cond + num_frames_future "
                                 "== 0); expected None")
        else:
            if cond is None:
                raise ValueError(f"cond: expected the {p} past and {f} future frames; got None (to mask them, "
                                 f"pass zeros or set cond_mask)")
            cond = self._stacked(cond, "cond", cfg.num_cond_frames)
            if cond.shape[0] != B or cond.dtype != x.dtype or cond.device != x.device:
                raise ValueError(f"cond: expected batch {B}, dtype {x.dtype} and device {x.device} (those of x_t), "
                                 f"got batch {cond.shape[0]}, dtype {cond.dtype}, device {cond.device}")
        if cond_mask is not None:
            self._check_mask(cond_mask, B, x)
            if cond is not None:
                cond = self._masked(cond, cond_mask)
        if cond is not None:
            self._check_cond_range(cond)

        if cache is not None:
            emb = self._time_embedding(t, cache.mask_embed, x.dtype)
            pyramid = cache.spatin
            if cache.conv_in_cond is None:
                h = self.conv_in(x)
            else:
                h = self._conv_in_part(x, 0) + cache.conv_in_cond
        else:
            emb = self._time_embedding(t, self._mask_embedding(cond_mask, t), x.dtype)
            spatin = cfg.conditioning == "spatin"
            if cond is not None and not spatin:
                x = torch.cat([x, cond], dim=1)
            pyramid = self._pyramid(cond) if spatin else None
            h = self.conv_in(x)

        skips = [h]
        for level in self.down:
            h = level(h, emb, pyramid, skips)
        h = self.mid[0](h, emb, pyramid)
        h = self.mid[1](h)
        h = self.mid[2](h, emb, pyramid)
        for level in self.up:
            h = level(h, emb, pyramid, skips)
        h = self.conv_out(self.norm_out(h, None, pyramid)).view(x_t.shape)
        if raw or cfg.prediction == "eps":
            return h
        return eps_from_prediction(h, x_t, self.signal_scale[t], self.noise_scale[t], cfg.prediction,
                                   cfg.sigma_data)

    def _time_embedding(self, t: torch.Tensor, mask_emb: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
        """SiLU of the time embedding (plus the mask embedding rows `mask_emb`
        with cond_emb), [B, emb_dim]: what every block's scale/shift layer reads."""
        steps = self.config.num_timesteps - 1 - t
        temb = self.time_mlp(timestep_embedding(steps, self.config.ngf).to(dtype))
        if self.mask_embed is not None:
            temb = torch.cat([temb, mask_emb], dim=1)
        return F.silu(temb)

    def _mask_embedding(self, cond_mask: torch.Tensor | None, t: torch.Tensor) -> torch.Tensor | None:
        """cond_emb: the mask embedding rows [B, ngf // 2], indexed by "past
        given" (all given when cond_mask is None); else None."""
        if self.mask_embed is None:
            return None
        past_given = cond_mask[:, 0].long() if cond_mask is not None else torch.ones_like(t)
        return self.mask_embed(past_given)

    def _masked(self, cond: torch.Tensor, cond_mask: torch.Tensor) -> torch.Tensor:
        """Stacked cond [B, (p+f)*C, H, W] with the frames of masked blocks zeroed."""
        cfg = self.config
        B, C, p, f = cond.shape[0], cfg.channels, cfg.num_frames_cond, cfg.num_frames_future
        given = torch.cat([cond_mask[:, :1].expand(B, p * C), cond_mask[:, 1:].expand(B, f * C)], dim=1)
        return torch.where(given[:, :, None, None], cond, torch.zeros((), dtype=cond.dtype, device=cond.device))

    def _pyramid(self, cond: torch.Tensor) -> dict[int, torch.Tensor]:
        """The condition pyramid: each level's size s -> cond resized (nearest) to s x s."""
        cfg = self.config
        sizes = {cfg.image_size // 2**i for i in range(len(cfg.ch_mult))}
        return {s: cond if s == cfg.image_size else F.interpolate(cond, size=(s, s), mode="nearest") for s in sizes}

    # --- condition cache ------------------------------------------------

    def _conv_in_part(self, v: torch.Tensor, start: int) -> torch.Tensor:
        """conv_in restricted to input channels start.. of its weight: the noisy
        frames' part with its bias (start 0, v = x), or the condition frames'
        part without (start k*C, v = cond)."""
        conv, kC = self.conv_in, self.config.num_frames * self.config.channels
        weight = conv.weight[:, :kC] if start == 0 else conv.weight[:, start:]
        bias = conv.bias if start == 0 else None
        return F.conv2d(v, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)

    def _spatin_layers(self) -> list[tuple[Norm, int]]:
        """Every SPATIN norm layer with the size of the maps it normalises, in call order."""
        res = level_resolutions(self.config)

        def block(b: ResBlock, r: int) -> list[tuple[Norm, int]]:
            out = {"up": 2 * r, "down": r // 2, None: r}[b.resample]  # norm1 runs after resampling
            return [(b.norm0, r), (b.norm1, out)]

        layers = []
        for r, level in zip(res, self.down):
            for b in [*level.blocks, *([level.downsample] if level.downsample is not None else [])]:
                layers += block(b, r)
        layers += block(self.mid[0], res[-1]) + block(self.mid[2], res[-1])
        for r, level in zip(reversed(res), self.up):
            for b in [*level.blocks, *([level.upsample] if level.upsample is not None else [])]:
                layers += block(b, r)
        layers.append((self.norm_out, self.config.image_size))
        return [(norm, r) for norm, r in layers if norm.spatin is not None]

    def _cached_params(self) -> list[torch.Tensor]:
        """The weights a ConditionCache is computed from."""
        leaves = self.__dict__.get("_cache_leaves")
        if leaves is None:  # the layers, found once (weights may be replaced, modules are not)
            leaves = [m for norm, _ in self._spatin_layers() for m in (norm.spatin.shared, norm.spatin.gamma_beta)]
            leaves += [self.conv_in] if self.config.conditioning == "concat" else []
            leaves += [self.mask_embed] if self.mask_embed is not None else []
            self.__dict__["_cache_leaves"] = leaves
        return [p for m in leaves for p in (m.weight, getattr(m, "bias", None)) if p is not None]

    def _check_cache(self, cache: ConditionCache, x: torch.Tensor) -> None:
        """Raise unless `cache` serves this network for the stacked noisy frames x."""
        if not isinstance(cache, ConditionCache):
            raise TypeError(f"cache: expected a ConditionCache from model.condition(), got {type(cache).__name__}")
        if (x.shape[0], x.dtype, x.device) != (cache.batch, cache.dtype, cache.device):
            raise ValueError(f"cache: built for batch {cache.batch}, {cache.dtype} on {cache.device}; x_t has "
                             f"batch {x.shape[0]}, {x.dtype} on {x.device}. Build one for these frames with "
                             f"model.condition(cond, cond_mask)")
        # The network's identity and weight versions: read eagerly only (under
        # torch.compile dynamo would guard on them and recompile for every new
        # cache), so a compiled forward checks batch, dtype and device alone.
        if not torch.compiler.is_compiling():
            if cache.model is not self:
                raise ValueError("cache: built by another network; build it with this network's condition()")
            if weights_version(self._cached_params()) != cache.weights:
                raise ValueError("cache: the network's weights changed since it was built; build it again with "
                                 "model.condition(cond, cond_mask)")

    def condition(self, cond: torch.Tensor, cond_mask: torch.Tensor | None = None) -> ConditionCache:
        """Compute once what depends only on the condition frames, for
        `forward(x_t, t, cache=...)` at every step of a sampling block.

        SPATIN: every SPATIN layer's (gamma, beta), from the same convolutions
        on the same pyramid as forward, so a cached forward equals the
        uncached one bit for bit. Concat: conv(cond, W_c) of the split conv_in
        (see `mcvd.nn.condition`); the cached forward adds conv(x, W_x) + b to
        it, which sums the same products as the single convolution in
        another order: each output differs from forward's by at most
        2 * gamma_{n+1} * (|W| conv |[x, cond]| + |b|), gamma_n = n u / (1 - n u),
        n = (k + p + f) * C * 9 products, u the unit roundoff of the dtype.
        With cond_emb: the mask embedding rows. Memory: SPATIN keeps 2 C H W
        values per layer and sample (64 MB per sample in float32 for the
        SMMNIST preset), concat ngf H W per sample.

        Args:
            cond: past then future frames, [B, p+f, C, H, W] or stacked
                [B, (p+f)*C, H, W], the model's dtype.
            cond_mask: bool [B, 2] (past given, future given) or None (all
                given), as in forward: masked frames are zeroed first.
        Returns:
            a ConditionCache, valid for this network (its weights unchanged)
            and x_t of cond's batch size, dtype and device. Built with
            autograd if it is enabled (the training loss never uses a cache).
        """
        cfg = self.config
        if cfg.num_cond_frames == 0:
            raise ValueError("cond: this model has no condition frames (num_frames_cond + num_frames_future == 0); "
                             "there is nothing to cache, call it without cache=")
        if cond is None:
            raise ValueError(f"cond: expected the {cfg.num_frames_cond} past and {cfg.num_frames_future} future "
                             f"frames; got None (to mask them, pass zeros or set cond_mask)")
        cond = self._stacked(cond, "cond", cfg.num_cond_frames)
        B = cond.shape[0]
        if cond.dtype != self.conv_in.weight.dtype:
            raise TypeError(f"cond: expected dtype {self.conv_in.weight.dtype} (the model's), got {cond.dtype}")
        if cond_mask is not None:
            self._check_mask(cond_mask, B, cond, "cond")
            cond = self._masked(cond, cond_mask)
        self._check_cond_range(cond)
        ones = torch.ones(B, dtype=torch.long, device=cond.device)
        mask_emb = self._mask_embedding(cond_mask, ones)
        spatin = conv_in_cond = None
        if cfg.conditioning == "spatin":
            pyramid = self._pyramid(cond)
            spatin = SpatinMaps()
            # Dense once here instead of inside spatin_norm at every step (same values), in the layout the
            # norms run in: channels_last when the condition frames are (as mcvd.optimize passes them on
            # the CPU), so that the kernel reads the maps in place.
            layout = ops.spatin_norm_output_format(cond)
            for norm, r in self._spatin_layers():
                gamma, beta = norm.spatin(pyramid[r])
                spatin[norm] = (gamma.contiguous(memory_format=layout), beta.contiguous(memory_format=layout))
        else:
            conv_in_cond = self._conv_in_part(cond, cfg.num_frames * cfg.channels)
        return ConditionCache(batch=B, dtype=cond.dtype, device=cond.device, spatin=spatin,
                              conv_in_cond=conv_in_cond, mask_embed=mask_emb, model=self,
                              weights=weights_version(self._cached_params()))


def _check_backend_name(backend) -> None:
    """A backend named when it is set; whether it runs on the inputs' device is known at the first call."""
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS} or None, got {backend!r}")
