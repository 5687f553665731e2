"""The SGC-VQGAN model: pyramid VQGAN encoder/decoder around FastSemanticQuantizer, PatchGAN, losses."""
from .discriminator import PatchDiscriminator
from .losses import VQGANLoss, adaptive_weight, hinge_d_loss
from .lpips import LPIPS
from .config import IGNORE_LABEL, ModelConfig, ModelOutput
from .sgcvqgan import SGCVQGAN

__all__ = [
    "SGCVQGAN",
    "ModelConfig",
    "ModelOutput",
    "PatchDiscriminator",
    "VQGANLoss",
    "LPIPS",
    "adaptive_weight",
    "hinge_d_loss",
    "IGNORE_LABEL",
]
