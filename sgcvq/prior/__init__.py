"""sgcvq.prior: a masked-token prior (MaskGIT-style) over a tokenizer's token grids, and what it is
for: layout-controlled scene generation and editing without conditional training (each position
restricted to its class's codes), next-frame prediction, and a judge that scores decoded images.

    from sgcvq.prior import MaskedTokenPrior, PriorConfig, train_prior, decode
    prior = MaskedTokenPrior(PriorConfig(num_codes=128, height=8, width=8))
    train_prior(prior, grids)                               # grids [M, 64] int64 token ids
    samples = decode(prior, masked, allowed=allowed_codes(layout, class_codes))

The command line: `sgcvq prior train | sample | edit | predict` (sgcvq/prior/commands.py).
"""
from .bits import bits_per_token
from .heads import FactorisedHead, FlatHead, code_classes_from_offsets, split_bits
from .judge import Judge, JudgeConfig, load_judge, save_judge, segment, train_judge
from .layout import (allowed_codes, check_label_map, class_code_frequencies, class_codes_from_counts,
                     class_codes_from_offsets, code_class_counts, token_layout)
from .sampling import decode, sample_context_free
from .schedule import cosine_gamma, masked_after_steps, sample_mask
from .store import PriorBundle, load_prior, save_prior
from .tasks import edit_grids, fit_prior, paint_box, prior_config_for, sample_grids
from .tokens import Tokenizer, load_prior_tokenizer
from .training import PriorTrainConfig, masked_nll, train_prior
from .transformer import MaskedTokenPrior, PriorConfig
from .video import clip_windows, predict_frames

__all__ = [
    "MaskedTokenPrior", "PriorConfig", "FlatHead", "FactorisedHead", "split_bits", "code_classes_from_offsets",
    "cosine_gamma", "masked_after_steps", "sample_mask", "PriorTrainConfig", "train_prior", "masked_nll",
    "decode", "sample_context_free", "allowed_codes", "check_label_map", "class_code_frequencies",
    "class_codes_from_counts", "class_codes_from_offsets", "code_class_counts", "token_layout",
    "Judge", "JudgeConfig", "train_judge", "save_judge", "load_judge", "segment", "bits_per_token",
    "PriorBundle", "save_prior", "load_prior", "Tokenizer", "load_prior_tokenizer", "fit_prior", "sample_grids",
    "edit_grids", "paint_box", "prior_config_for", "predict_frames", "clip_windows",
]
