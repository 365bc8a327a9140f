"""The MCVD network: config, blocks, the U-Net, and this package's model files."""
from .condition import ConditionCache
from .config import ModelConfig
from .model_file import load_model, save_model
from .network import MCVD

__all__ = ["MCVD", "ModelConfig", "ConditionCache", "load_model", "save_model"]
