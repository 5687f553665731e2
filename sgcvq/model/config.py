"""ModelConfig (architecture + quantizer settings) and ModelOutput (what the model returns)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE_LABEL = 255


@dataclass
class ModelConfig:
    """Architecture and quantizer settings; the defaults build a 64x64, f8 model of 1.5M parameters
    (plus a 0.7M-parameter discriminator).

    channel_mult: one entry per resolution; len(channel_mult) - 1 stride-2 downsamplings, so the
        downsampling factor is 2 ** (len(channel_mult) - 1) (8 for 4 entries, 16 for 5).
    attn_resolutions_lowest: self-attention in the middle block (token resolution) and the coarse
        pyramid stage (half of it).
    embed_dim: token dimension D, split over the two pyramid levels (fine gets the remainder).
    num_classes: semantic classes of the codebook groups; None = plain-VQ baseline.
    group_sizes: "equal", "frequency" (needs class_frequencies: C pixel frequencies; group sizes
        follow frequency ** 0.5, at least min_codes_per_class) or C explicit sizes.
    level_weights: distance weights (fine, coarse) of the pyramid levels (docs/method.md §1.4).
    pyramid_channels: width of the pyramid's lateral convs (0 = the encoder's last width).
    quantizer: "auto" (sgc with num_classes, ema without), "sgc", "ema", "vqgan" (taming's
        gradient-learned codebook) or "cvq" (CVQ-VAE-style anchored re-initialisation); see
        sgcvq/model/quantizers.py. The baselines (ema, vqgan, cvq) need num_classes=None.
    group_loss_weight, group_loss_temperature: λ and τ of the group loss (sgcvq/model/semantic_loss.py),
        which trains the encoder so that a label-free search lands in the token's class group
        (sgc only; 0 = off). group_loss_warmup: λ ramps linearly from 0 over these training steps.
        group_loss_decay_start, group_loss_decay_steps, group_loss_final_weight: from step
        decay_start (0 = never) λ falls linearly over decay_steps steps to final_weight (an absolute λ):
        the loss forms the label-free groups early, then leaves the encoder to reconstruction.
        group_loss_margin: None = the cross-entropy form; m >= 0 = the hinge form (the default, m = 1),
        zero for a token whose own group is nearer than any other by m quantization errors
        (semantic_loss.py).
        group_loss_max_tokens: labelled tokens per step that enter it (a fixed-stride subset).
        group_loss_levels: "all" (its gradient reaches every channel) or "coarse" (the distances are
        the full search distances, but only the coarse pyramid level gets the gradient: the fine
        level stays free for reconstruction detail).
    resolution: the training size, checked against the downsampling; the model itself accepts any
        H, W divisible by 2 x the downsampling factor.
    """

    resolution: int = 64
    in_channels: int = 3
    base_channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 1
    attn_resolutions_lowest: bool = True
    dropout: float = 0.0
    pyramid_channels: int = 0
    embed_dim: int = 64
    codebook_size: int = 512
    num_classes: int | None = 9  # the synthetic street scenes' classes
    group_sizes: str | tuple[int, ...] = "equal"
    class_frequencies: tuple[float, ...] | None = None
    min_codes_per_class: int = 1
    level_weights: tuple[float, ...] = (1.0, 1.0)
    decay: float = 0.99
    eps: float = 1e-5
    commitment_weight: float = 0.25
    threshold_dead: float = 2.0
    max_idle_steps: int = 100  # a code that wins no token for this many steps is re-seeded too
    # issue 24: re-seeds that split a loaded cell (D² rule), and group sizes that follow each group's
    # error mass (every this many steps; 0 = fixed groups). See FastSemanticQuantizer.
    reseed_split: bool = False
    rebalance_every: int = 0
    rebalance_rate: float = 0.5
    kmeans_init: bool = True
    kmeans_iters: int = 10
    semantic_loss_weight: float = 0.0
    quantizer: str = "auto"
    # the semantic sweep (benchmarks/RESULTS.md): the hinge form (margin 1) at λ = 0.05 keeps purity and
    # mIoU above their floors at 0.16 dB less PSNR cost than the cross-entropy form (margin None)
    group_loss_weight: float = 0.05
    group_loss_temperature: float = 1.0
    group_loss_warmup: int = 0
    group_loss_decay_start: int = 0
    group_loss_decay_steps: int = 0
    group_loss_final_weight: float = 0.0
    group_loss_margin: float | None = 1.0
    group_loss_max_tokens: int = 4096
    group_loss_levels: str = "all"
    # issue 24: a token whose cell's majority class holds less than this share of its pixels (a
    # boundary cell) searches all codes instead of its majority class's group; the group loss still
    # takes its majority class. 0: every labelled token searches its group (docs/method.md §1.3).
    label_min_share: float = 0.0
    disc_channels: int = 32
    disc_layers: int = 3

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)

    def validate(self) -> None:
        """Raise ValueError naming the field for settings the model cannot be built with."""
        if len(self.channel_mult) < 2:
            raise ValueError(f"ModelConfig.channel_mult={self.channel_mult}: needs >= 2 entries (>= 1 downsampling)")
        if any(m < 1 for m in self.channel_mult):
            raise ValueError(f"ModelConfig.channel_mult={self.channel_mult}: entries must be >= 1")
        # The coarse pyramid stage halves the token grid once more, so the image must divide by 2f.
        if self.resolution % (2 * self.downsample_factor):
            raise ValueError(f"ModelConfig.resolution={self.resolution} must be divisible by 2 x the downsampling "
                             f"factor ({2 * self.downsample_factor}) for channel_mult={self.channel_mult}")
        for name in ("in_channels", "base_channels", "num_res_blocks", "embed_dim", "codebook_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"ModelConfig.{name}={getattr(self, name)} must be >= 1")
        if len(self.level_weights) != 2 or any(w < 0 for w in self.level_weights) or sum(self.level_weights) <= 0:
            raise ValueError(f"ModelConfig.level_weights={self.level_weights}: need 2 weights (fine, coarse), "
                             ">= 0, not both 0")
        if self.num_classes is not None and not 1 <= self.num_classes < IGNORE_LABEL:
            raise ValueError(f"ModelConfig.num_classes={self.num_classes} must be None or in 1..254")
        from .quantizers import resolve_quantizer_kind

        resolve_quantizer_kind(self.quantizer, self.num_classes)
        if self.group_loss_weight < 0 or self.group_loss_temperature <= 0 or self.group_loss_warmup < 0 \
                or self.group_loss_max_tokens < 1:
            raise ValueError(f"ModelConfig: group_loss_weight={self.group_loss_weight} must be >= 0, "
                             f"group_loss_temperature={self.group_loss_temperature} > 0, group_loss_warmup="
                             f"{self.group_loss_warmup} >= 0 and group_loss_max_tokens={self.group_loss_max_tokens} >= 1")
        if self.group_loss_decay_start < 0 or self.group_loss_decay_steps < 0 or self.group_loss_final_weight < 0:
            raise ValueError(f"ModelConfig: group_loss_decay_start={self.group_loss_decay_start}, group_loss_decay_steps="
                             f"{self.group_loss_decay_steps} and group_loss_final_weight={self.group_loss_final_weight} "
                             "must be >= 0")
        if self.group_loss_margin is not None and self.group_loss_margin < 0:
            raise ValueError(f"ModelConfig.group_loss_margin={self.group_loss_margin} must be None or >= 0")
        if not 0.0 <= self.label_min_share <= 1.0:
            raise ValueError(f"ModelConfig.label_min_share={self.label_min_share} must be in [0, 1]")
        if self.group_loss_levels not in ("all", "coarse"):
            raise ValueError(f"ModelConfig.group_loss_levels={self.group_loss_levels!r} must be 'all' or 'coarse'")
        if self.num_classes is not None and self.group_sizes == "frequency" and (
            self.class_frequencies is None or len(self.class_frequencies) != self.num_classes
        ):
            raise ValueError(f"ModelConfig.group_sizes='frequency' needs class_frequencies with num_classes="
                             f"{self.num_classes} numbers, got {self.class_frequencies}")


@dataclass
class ModelOutput:
    """What SGCVQGAN.forward returns.

    recon [B, C, H, W] float; indices [B, h, w] int64; quant_loss scalar (commitment + semantic);
    token_labels [B, h, w] int64 majority class per token (-1 = ignore), None without labels.
    """

    recon: torch.Tensor
    indices: torch.Tensor
    quant_loss: torch.Tensor
    token_labels: torch.Tensor | None = None
