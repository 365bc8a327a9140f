"""Video prediction metrics: PSNR, SSIM, LPIPS, FVD (pure PyTorch ports with
pretrained weights loaded safely), and the summary statistics of the MCVD
evaluation (its protocol: mcvd.metrics.protocol)."""
from .fvd import frechet_distance, fvd, fvd_protocol, i3d_features, i3d_preprocess
from .i3d import I3D
from .lpips import LPIPS, lpips
from .psnr_ssim import psnr, ssim
from .stats import summary
from .weights import WeightsError

__all__ = ["I3D", "LPIPS", "WeightsError", "frechet_distance", "fvd", "fvd_protocol", "i3d_features",
           "i3d_preprocess", "lpips", "psnr", "ssim", "summary"]
