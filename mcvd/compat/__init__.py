"""Loading the reference code's checkpoints and configs."""
from .official import load_official
from .official_config import read_official_config

__all__ = ["load_official", "read_official_config"]
