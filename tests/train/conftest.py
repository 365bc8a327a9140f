import signal

import pytest

from mcvd.train import RunConfig

# The smallest real MCVD: one 8 x 8 level, no attention, 4 channels.
TINY_MODEL = dict(image_size=8, channels=1, num_frames=2, num_frames_cond=2, ngf=4, ch_mult=[1],
                  num_res_blocks=1, attn_resolutions=[], n_head_channels=-1, dropout=0.0)


def _tiny_run(model=None, data=None, training=None) -> RunConfig:
    """A run of the tiny MCVD on Stochastic Moving MNIST scaled to 8 x 8 (4-pixel digits)."""
    return RunConfig.from_dict({
        "model": {**TINY_MODEL, **(model or {})},
        "data": {"digit_size": 4, "length": 64, **(data or {})},
        "training": {"batch_size": 4, "steps": 4, "lr": 1e-3, "warmup": 2, "ckpt_every": 2, "log_every": 1,
                     **(training or {})},
    })


@pytest.fixture
def tiny_run():
    """make(model=..., data=..., training=...) -> RunConfig of the tiny model, overrides per section."""
    return _tiny_run


@pytest.fixture
def interactive_sigint():
    """SIGINT handled as in an interactive shell (KeyboardInterrupt), whatever this process inherited: a job
    started in the background ignores it."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)
