"""Helpers of the command tests: the tiny run, synthetic input videos."""
import fractions

import numpy as np

# A tiny MCVD with past, current and future frames (so one checkpoint serves
# prediction, interpolation and generation), on 16 x 16 frames: the smallest
# size SSIM's 11 x 11 window accepts with some margin.
P, K, F, SIZE, DIGIT = 2, 2, 1, 16, 8
TINY_RUN = {
    "model": dict(image_size=SIZE, channels=1, num_frames=K, num_frames_cond=P, num_frames_future=F, ngf=4,
                  ch_mult=[1], num_res_blocks=1, attn_resolutions=[], n_head_channels=-1, dropout=0.0),
    "data": {"digit_size": DIGIT, "length": 16},
    "training": {"batch_size": 2, "steps": 2, "warmup": 1, "ema_rate": 0.5, "ckpt_every": 2, "log_every": 1,
                 "device": "cpu", "prob_mask_future": 0.5},
}


def encode_video(path, frames: np.ndarray, fps: int = 5) -> None:
    """Write uint8 RGB frames [T, H, W, 3] as a lossless-enough MP4 with PyAV directly."""
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=fractions.Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"qscale": "1"}
        for f in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        container.mux(stream.encode(None))


def moving_square(T: int, size: int = 32) -> np.ndarray:
    """uint8 RGB [T, size, size, 3]: a white 8 x 8 square moving 2 pixels right per frame on black."""
    out = np.zeros((T, size, size, 3), np.uint8)
    for t in range(T):
        out[t, 12:20, 2 * t:2 * t + 8] = 255
    return out
