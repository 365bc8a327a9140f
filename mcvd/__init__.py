"""mcvd: Masked Conditional Video Diffusion (Voleti et al., NeurIPS 2022) with
fused C++, CUDA and Triton kernels."""
import torch  # noqa: F401  (loads libtorch before the extension)

from mcvd import _C, ops, pretrained
from mcvd.compat import load_official
from mcvd.diffusion import SamplerConfig, StreamingPredictor, predict, sample
from mcvd.loader import load
from mcvd.nn import MCVD, ModelConfig
from mcvd.nn.optimize import optimize

__version__ = _C.build_info()["version"]

__all__ = ["ops", "pretrained", "__version__", "MCVD", "ModelConfig", "load", "load_official", "sample", "predict",
           "StreamingPredictor", "SamplerConfig", "optimize"]
