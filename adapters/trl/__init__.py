"""SofT-GRPO inside TRL's GRPOTrainer (trl 1.16): SoftGRPOConfig and SoftGRPOTrainer."""

from .config import LOSS_TYPE, SoftGRPOConfig
from .trainer import SoftGRPOTrainer, add_soft_head

__all__ = ["LOSS_TYPE", "SoftGRPOConfig", "SoftGRPOTrainer", "add_soft_head"]
