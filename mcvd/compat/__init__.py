"""Loading the reference code's checkpoints and configs."""
from .official import load_official

__all__ = ["load_official"]
