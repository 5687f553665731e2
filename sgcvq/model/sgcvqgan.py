"""SGC-VQGAN: encoder -> feature pyramid -> FastSemanticQuantizer -> decoder.

`SGCVQGAN(ModelConfig(num_classes=None))` is the plain-VQ baseline: the same network with an
ungrouped EMA codebook, so the two differ only in semantic guidance. `ModelConfig.quantizer`
swaps in the other baselines (taming's VQGAN quantizer, CVQ-VAE's), see quantizers.py.
"""
from __future__ import annotations

import torch
from torch import nn

from ..semantic import pool_labels
from .config import IGNORE_LABEL, ModelConfig, ModelOutput
from .decoder import Decoder
from .encoder import Encoder
from .pyramid import FeaturePyramid, split_embed_dim
from .quantizers import build_quantizer, resolve_quantizer_kind
from .semantic_loss import group_loss, group_loss_weight_on_device


class SGCVQGAN(nn.Module):
    """The tokenizer. images [B, 3, H, W] in [-1, 1] -> tokens [B, H/f, W/f] -> reconstruction."""

    def __init__(self, cfg: ModelConfig | None = None):
        super().__init__()
        cfg = cfg or ModelConfig()
        cfg.validate()
        self.cfg = cfg
        attention = cfg.attn_resolutions_lowest
        self.encoder = Encoder(cfg.in_channels, cfg.base_channels, tuple(cfg.channel_mult), cfg.num_res_blocks,
                               attention, cfg.dropout)
        self.level_dims = split_embed_dim(cfg.embed_dim, 2)
        self.pyramid = FeaturePyramid(self.encoder.out_channels, cfg.pyramid_channels or self.encoder.out_channels,
                                      self.level_dims)
        self.quantizer_kind = resolve_quantizer_kind(cfg.quantizer, cfg.num_classes)
        self.quantizer = build_quantizer(cfg, self.level_dims)
        self.decoder = Decoder(cfg.embed_dim, cfg.in_channels, cfg.base_channels, tuple(cfg.channel_mult),
                               cfg.num_res_blocks, attention, cfg.dropout)
        # defer_checks (the trainer sets it on a GPU): the pixel-label check of token_labels runs on
        # the device and raise_deferred_checks() reads it at log time, as the quantizer's do.
        self.defer_checks = False
        self._deferred_bad: torch.Tensor | None = None

    def raise_deferred_checks(self) -> None:
        """With defer_checks: raise the labels' ValueError found since the last call (one host read)."""
        pending, self._deferred_bad = self._deferred_bad, None
        if pending is not None and bool(pending):
            raise ValueError(f"labels held values outside 0..{(self.cfg.num_classes or IGNORE_LABEL) - 1} and "
                             f"the ignore label {IGNORE_LABEL} in a batch since the last check")

    @property
    def downsample_factor(self) -> int:
        return self.cfg.downsample_factor

    @property
    def last_layer(self) -> nn.Parameter:
        """The decoder's final conv weight, where VQGAN's adaptive GAN weight compares gradient norms."""
        return self.decoder.conv_out.weight

    # ----------------------------------------------------------------------------------------
    def token_labels(self, labels: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Majority class per token: labels [B, H, W] int (255 ignore) -> [B, h, w] int64 (-1 ignore).

        With num_classes=None (the baseline) any value 0..254 counts as a class, so the baseline's
        tokens can be scored against the same labels.
        """
        if labels.dim() != 3:
            raise ValueError(f"labels must be [B, H, W] pixel classes; got shape {list(labels.shape)}")
        if labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise ValueError(f"labels must be an integer tensor; got dtype {labels.dtype}")
        num_classes = self.cfg.num_classes or IGNORE_LABEL
        if not torch.compiler.is_compiling():
            bad = (labels < 0) | ((labels >= num_classes) & (labels != IGNORE_LABEL))
            if self.defer_checks:
                # Read at log time (raise_deferred_checks); pool_labels never indexes with a bad
                # value meanwhile (it does not vote).
                pending = bad.any()
                self._deferred_bad = pending if self._deferred_bad is None else self._deferred_bad | pending
            elif bool(bad.any()):
                raise ValueError(f"labels hold values outside 0..{num_classes - 1} and the ignore label "
                                 f"{IGNORE_LABEL}: {torch.unique(labels[bad])[:8].tolist()}")
        return pool_labels(labels, grid, num_classes, IGNORE_LABEL)

    def encode_features(self, images: torch.Tensor) -> torch.Tensor:
        """Pre-quantization tokens [B, embed_dim, h, w] (fine level channels first, then coarse)."""
        if images.dim() != 4 or images.shape[1] != self.cfg.in_channels:
            raise ValueError(f"images must be [B, {self.cfg.in_channels}, H, W]; got {list(images.shape)}")
        f = self.downsample_factor
        if images.shape[-2] % (2 * f) or images.shape[-1] % (2 * f):
            raise ValueError(f"images are {images.shape[-2]}x{images.shape[-1]}; both sides must be divisible "
                             f"by {2 * f} (downsampling factor {f}, plus the coarse pyramid level)")
        return self.pyramid(*self.encoder(images))

    def _check_labels(self, images: torch.Tensor, labels: torch.Tensor | None) -> None:
        if labels is not None and (labels.shape[0] != images.shape[0] or labels.shape[-2:] != images.shape[-2:]):
            raise ValueError(f"labels {list(labels.shape)} do not match images {list(images.shape)}: "
                             "expected [B, H, W] with the images' B, H, W")

    def _search_labels(self, labels: torch.Tensor | None, token_labels: torch.Tensor | None):
        """The labels the quantizer searches with: token_labels, with boundary cells (majority share under
        cfg.label_min_share) set to -1 (all codes). None for the baseline, which ignores labels."""
        if self.cfg.num_classes is None or token_labels is None:
            return None
        if self.cfg.label_min_share <= 0:
            return token_labels
        return pool_labels(labels, tuple(token_labels.shape[-2:]), self.cfg.num_classes, IGNORE_LABEL,
                           self.cfg.label_min_share)

    def _quantize(self, z: torch.Tensor, token_labels: torch.Tensor | None, search_labels: torch.Tensor | None = None):
        tokens = z.permute(0, 2, 3, 1)  # [B, h, w, D]
        labels = token_labels if self.cfg.num_classes is not None else None  # the baseline ignores labels
        search = token_labels if search_labels is None else search_labels
        quantized, indices, loss = self.quantizer(tokens, labels=search if labels is not None else None)
        if self.training and labels is not None and self.cfg.group_loss_weight > 0:
            loss = loss + self._group_loss(tokens, labels)
        return quantized.permute(0, 3, 1, 2), indices, loss

    def _group_loss(self, tokens: torch.Tensor, token_labels: torch.Tensor) -> torch.Tensor:
        """λ(step) · group loss (semantic_loss.py) in the quantizer's weighted search space."""
        cfg, q = self.cfg, self.quantizer
        if cfg.group_loss_warmup > 0 or cfg.group_loss_decay_start > 0:
            # A schedule: λ from the step counter (q.steps already counts this step's update),
            # computed on the device in float64 like the Python schedule, so the step never waits
            # for the device to read it.
            weight = group_loss_weight_on_device(q.steps, cfg.group_loss_weight, cfg.group_loss_warmup,
                                                 cfg.group_loss_decay_start, cfg.group_loss_decay_steps,
                                                 cfg.group_loss_final_weight)
        else:
            weight = cfg.group_loss_weight
            if weight == 0.0:
                return tokens.new_zeros(())
        x = tokens.reshape(-1, tokens.shape[-1])
        if cfg.group_loss_levels == "coarse":  # same distances, gradient into the coarse level only
            fine = self.level_dims[0]
            x = torch.cat([x[:, :fine].detach(), x[:, fine:]], dim=1)
        if q._scaled:
            x = x * q.channel_scale
        return weight * group_loss(x, token_labels.reshape(-1), q.codebook, q.class_offsets, cfg.num_classes,
                                   cfg.group_loss_temperature, cfg.group_loss_max_tokens, cfg.group_loss_margin)

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> ModelOutput:
        """images [B, 3, H, W] float in [-1, 1]; labels [B, H, W] int64 pixel classes (255 ignore) or None."""
        self._check_labels(images, labels)
        z = self.encode_features(images)
        token_labels = self.token_labels(labels, tuple(z.shape[-2:])) if labels is not None else None
        quantized, indices, quant_loss = self._quantize(z, token_labels, self._search_labels(labels, token_labels))
        recon = self.decoder(quantized)
        return ModelOutput(recon=recon, indices=indices, quant_loss=quant_loss, token_labels=token_labels)

    @torch.no_grad()
    def encode(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Token indices [B, h, w] int64. With labels (SGC model), each token searches its class's codes.

        Never updates the codebook: the quantizer runs in eval mode here whatever the model's mode.
        """
        self._check_labels(images, labels)
        z = self.encode_features(images)
        token_labels = self.token_labels(labels, tuple(z.shape[-2:])) if labels is not None else None
        was_training = self.quantizer.training
        self.quantizer.train(False)
        try:
            return self._quantize(z, token_labels, self._search_labels(labels, token_labels))[1]
        finally:
            self.quantizer.train(was_training)

    @torch.no_grad()
    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] from token indices [B, h, w] int64."""
        if indices.dim() != 3:
            raise ValueError(f"indices must be [B, h, w]; got shape {list(indices.shape)}")
        codes = self.quantizer.get_codes_from_indices(indices)  # [B, h, w, D], unscaled
        return self.decoder(codes.permute(0, 3, 1, 2).contiguous())
