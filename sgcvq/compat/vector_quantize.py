"""vector-quantize-pytorch 1.34.1's `VectorQuantize`, argument for argument, on sgcvq's fused ops.

    from sgcvq.compat import VectorQuantize        # instead of: from vector_quantize_pytorch import VectorQuantize
    vq = VectorQuantize(dim=256, codebook_size=512, decay=0.8, commitment_weight=1.0)
    quantized, indices, commit_loss = vq(x)        # x [B, N, 256]

The constructor, its defaults (decay 0.8, commitment_weight 1.0, rotation_trick on for dim > 1,
no dead-code expiry: dead_code_threshold_ratio 0), the forward outputs (shapes, dtypes, a zero loss in eval,
`return_loss_breakdown`, `mask` / `lens`), `codebook`, `get_codes_from_indices`,
`get_output_from_indices` and the state_dict keys (`_codebook.embed`, `_codebook.embed_avg`,
`_codebook.cluster_size`, `_codebook.initted`, `project_in.*`, `project_out.*`) are the peer's, so
checkpoints load both ways with a strict load. With the same seed the same random numbers are
drawn in the same order (initialisation, k-means seeds, dead-code replacement), so a training run
tracks the peer's step for step (tests/test_compat_vq.py).

What changes is the cost: the search is `sgcvq.nearest_code` (no N x K distance matrix, no one-hot),
the EMA statistics come from `sgcvq.cluster_stats` and the update from `sgcvq.ema_update`, the
commitment loss is read off the search's distances (its backward is one fused pass), and the
rotation trick's backward recomputes its three unit vectors instead of keeping them.

Options that are not supported raise a ValueError naming the argument (see _UNSUPPORTED); every
other argument of the peer works as in the peer. The one extra is semantic guidance:
`num_classes=C` at construction and `labels=` token labels in forward restrict each token's search
to its class's group of codes (single head only).

Release mirrored: 1.34.1 (the EMA codebook of 1.33+: `cluster_size` and `embed_avg` start at zero,
k-means writes `embed` only, the codebook is `(embed_avg + eps·embed) / (cluster_size + eps)`, dead
codes are those under `dead_code_threshold_ratio` × the mean cluster size and are re-seeded with
`reset_cluster_size_ratio` × the mean, the smallest counts first). The deprecated
`threshold_ema_dead_code` and `reset_cluster_size` are accepted and converted as the peer converts
them, with a FutureWarning. A checkpoint of 1.32 loads (same keys and shapes) but then trains with
1.34.1's arithmetic, as the peer's own 1.34.1 would: for 1.32's Laplace-smoothed EMA, use
`sgcvq.FastSemanticQuantizer` (whose EMA is that one, `sgcvq.reference.ema_update_reference`).
One deliberate difference: with heads sharing one codebook, `get_output_from_indices` follows
`forward` (the peer's raises a RuntimeError there, 1.32 and 1.34.1 alike).
"""
from __future__ import annotations

import math
import warnings
from collections import namedtuple

import torch
import torch.nn.functional as F
from torch import nn

from ..distributed import is_distributed
from ..ema_codebook import codebook_from_statistics, dead_codes, ema_statistics_, lloyd_steps
from ..ops import cluster_stats, nearest_code
from ..semantic import class_offsets_from_sizes, group_sizes_for
from .sqdist_loss import sqdist_loss

__all__ = ["VectorQuantize", "LossBreakdown"]

_NAME = "VectorQuantize"
PEER_RELEASE = "1.34.1"  # the vector-quantize-pytorch release this class mirrors (tests/test_compat_vq.py)

LossBreakdown = namedtuple("LossBreakdown", ["commitment", "codebook_diversity", "orthogonal_reg", "inplace_optimize"])

# constructor argument -> (the value that works, why the others are not supported)
_UNSUPPORTED = {
    "commitment_use_cross_entropy_loss": (False, "a cross-entropy commitment needs the N x K distance matrix"),
    "codebook_diversity_loss_weight": (0.0, "the diversity loss needs the N x K distance matrix"),
    "stochastic_sample_codes": (False, "stochastic (Gumbel) code sampling needs the N x K distances"),
    "straight_through": (False, "Gumbel straight-through needs the N x K distances"),
    "vq_bridge": (None, "a vq_bridge codebook transform is not implemented"),
    "manual_ema_update": (False, "manual EMA updates are not implemented"),
    "in_place_codebook_optimizer": (None, "the in-place codebook optimizer is not implemented"),
    "affine_param": (False, "affine codebook parameters are not implemented"),
    "sync_affine_param": (False, "affine codebook parameters are not implemented"),
    "sync_update_v": (0.0, "the synchronous update rule is not implemented"),
}


class _Codebook(nn.Module):
    """The peer's Codebook state, under its names: embed [C, K, d] (a parameter when it is learned
    by gradient or orthogonally regularised), embed_avg [C, K, d], cluster_size [C, K], initted."""

    def __init__(self, dim, codebook_size, num_codebooks, kmeans_init, use_cosine_sim, learnable):
        super().__init__()
        # NOTE: 1.34.1 starts the statistics at zero (1.32: cluster_size ones, embed_avg = embed)
        if kmeans_init:
            embed = torch.zeros(num_codebooks, codebook_size, dim)
        else:
            embed = torch.empty(num_codebooks, codebook_size, dim)
            nn.init.kaiming_uniform_(embed)  # the peer's start (and its draw from the generator)
            if use_cosine_sim:
                embed = _l2norm(embed)
        self.register_buffer("initted", torch.tensor(not kmeans_init))
        self.register_buffer("cluster_size", torch.zeros(num_codebooks, codebook_size))
        self.register_buffer("embed_avg", torch.zeros(num_codebooks, codebook_size, dim))
        if learnable:
            self.embed = nn.Parameter(embed)
        else:
            self.register_buffer("embed", embed)


class VectorQuantize(nn.Module):
    """vector-quantize-pytorch 1.34.1's VectorQuantize (same arguments and defaults) on sgcvq's ops.

    Extra, keyword only: num_classes (semantic codebook: class c owns codes
    [class_offsets[c], class_offsets[c+1])), group_sizes ("equal" or C sizes), search_mode
    ("exact" or "fast_exact", see sgcvq.nearest_code). With labels only the search is grouped;
    k-means and dead-code replacement stay the peer's (class-blind): for in-class re-seeding and
    class centres use sgcvq.FastSemanticQuantizer.
    """

    def __init__(
        self,
        dim,
        codebook_size,
        codebook_dim=None,
        heads=1,
        separate_codebook_per_head=False,
        decay=0.8,
        eps=1e-5,
        freeze_codebook=False,
        kmeans_init=False,
        kmeans_iters=10,
        sync_kmeans=True,
        use_cosine_sim=False,
        layernorm_after_project_in=False,
        dead_code_threshold_ratio=0.0,
        reset_cluster_size_ratio=None,
        threshold_ema_dead_code=None,
        reset_cluster_size=None,
        channel_last=True,
        accept_image_fmap=False,
        accept_3d_fmap=False,
        commitment_weight=1.0,
        commitment_use_cross_entropy_loss=False,
        orthogonal_reg_weight=0.0,
        orthogonal_reg_active_codes_only=False,
        orthogonal_reg_max_codes=None,
        codebook_diversity_loss_weight=0.0,
        codebook_diversity_temperature=100.0,
        stochastic_sample_codes=False,
        sample_codebook_temp=1.0,
        straight_through=False,
        rotation_trick=None,
        directional_reparam=False,
        directional_reparam_variance=5e-3,
        sync_codebook=None,
        sync_affine_param=False,
        ema_update=None,
        vq_bridge=None,
        manual_ema_update=False,
        learnable_codebook=None,
        in_place_codebook_optimizer=None,
        manual_in_place_optimizer_update=False,
        affine_param=False,
        affine_param_batch_decay=0.99,
        affine_param_codebook_decay=0.9,
        sync_update_v=0.0,
        return_zeros_for_masked_padding=True,
        route_gradients_to_input=True,
        *,
        num_classes: int | None = None,
        group_sizes="equal",
        search_mode: str = "exact",
    ):
        super().__init__()
        given = dict(
            commitment_use_cross_entropy_loss=commitment_use_cross_entropy_loss,
            codebook_diversity_loss_weight=codebook_diversity_loss_weight,
            stochastic_sample_codes=stochastic_sample_codes, straight_through=straight_through,
            vq_bridge=vq_bridge, manual_ema_update=manual_ema_update,
            in_place_codebook_optimizer=in_place_codebook_optimizer, affine_param=affine_param,
            sync_affine_param=sync_affine_param, sync_update_v=sync_update_v,
        )
        for arg, (works, why) in _UNSUPPORTED.items():
            if given[arg] != works and not (works is None and given[arg] is None):
                raise ValueError(f"{_NAME}: {arg}={given[arg]!r} is not supported by sgcvq.compat ({why}); "
                                 f"leave it at {works!r}")
        if sync_codebook or (sync_codebook is None and is_distributed()):
            raise ValueError(f"{_NAME}: sync_codebook (synchronised codebooks across ranks) is not supported by "
                             "sgcvq.compat; pass sync_codebook=False, or use sgcvq.FastSemanticQuantizer for DDP")
        for arg, value, minimum in (("dim", dim, 1), ("codebook_size", codebook_size, 1), ("heads", heads, 1),
                                    ("kmeans_iters", kmeans_iters, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{_NAME}: {arg} must be an int >= {minimum}, got {value!r}")

        dead_code_threshold_ratio, reset_cluster_size_ratio = _dead_code_ratios(
            codebook_size, dead_code_threshold_ratio, reset_cluster_size_ratio, threshold_ema_dead_code,
            reset_cluster_size)
        directional_reparam = bool(directional_reparam)
        ema_update = (not directional_reparam) if ema_update is None else bool(ema_update)
        learnable_codebook = directional_reparam if learnable_codebook is None else bool(learnable_codebook)
        rotation_trick = (not directional_reparam and dim > 1) if rotation_trick is None else bool(rotation_trick)
        if directional_reparam and rotation_trick:
            raise ValueError(f"{_NAME}: directional_reparam and rotation_trick are exclusive (as in the peer)")
        if directional_reparam and dead_code_threshold_ratio == 0:
            raise ValueError(f"{_NAME}: directional_reparam needs dead-code replacement: dead_code_threshold_ratio > 0 "
                             "(as in the peer)")
        if use_cosine_sim and learnable_codebook:
            raise ValueError(f"{_NAME}: use_cosine_sim is not compatible with learnable_codebook (as in the peer)")
        if ema_update and learnable_codebook:
            raise ValueError(f"{_NAME}: learnable_codebook=True needs ema_update=False (as in the peer)")
        if accept_image_fmap and accept_3d_fmap:
            raise ValueError(f"{_NAME}: accept_image_fmap and accept_3d_fmap are exclusive")
        if search_mode not in ("exact", "fast_exact"):
            raise ValueError(f"{_NAME}: search_mode must be 'exact' or 'fast_exact', got {search_mode!r}")

        self.dim = dim
        self.heads = heads
        self.separate_codebook_per_head = separate_codebook_per_head
        codebook_dim = dim if codebook_dim is None else codebook_dim
        codebook_input_dim = codebook_dim * heads
        requires_projection = codebook_input_dim != dim
        # module creation order = the peer's, so a seeded construction draws the same numbers
        if requires_projection:
            proj = nn.Linear(dim, codebook_input_dim)
            self.project_in = nn.Sequential(proj, nn.LayerNorm(codebook_input_dim)) if layernorm_after_project_in else proj
            self.project_out = nn.Linear(codebook_input_dim, dim)
        else:
            self.project_in = nn.Identity()
            self.project_out = nn.Identity()
        self.has_projections = requires_projection
        self.codebook_dim = codebook_dim

        self.eps = eps
        self.decay = decay
        self.has_commitment_loss = commitment_weight > 0.0 and not directional_reparam
        self.commitment_weight = commitment_weight
        self.learnable_codebook = learnable_codebook
        self.has_codebook_orthogonal_loss = orthogonal_reg_weight > 0.0
        self.orthogonal_reg_weight = orthogonal_reg_weight
        self.orthogonal_reg_active_codes_only = orthogonal_reg_active_codes_only
        self.orthogonal_reg_max_codes = orthogonal_reg_max_codes
        self.rotation_trick = rotation_trick
        self.directional_reparam = directional_reparam
        self.directional_reparam_variance = directional_reparam_variance
        self.route_gradients_to_input = route_gradients_to_input
        self.use_cosine_sim = use_cosine_sim
        self.dead_code_threshold_ratio = dead_code_threshold_ratio
        self.reset_cluster_size_ratio = reset_cluster_size_ratio
        self.has_dead_code_replacement = dead_code_threshold_ratio > 0.0
        self.kmeans_iters = kmeans_iters
        self.sample_codebook_temp = sample_codebook_temp  # no effect without stochastic sampling, as in the peer
        self._ema_update = ema_update
        self.num_codebooks = heads if separate_codebook_per_head else 1

        self._codebook = _Codebook(codebook_dim, codebook_size, self.num_codebooks, kmeans_init, use_cosine_sim,
                                   learnable=self.has_codebook_orthogonal_loss or learnable_codebook)
        self.codebook_size = codebook_size
        self.accept_image_fmap = accept_image_fmap
        self.accept_3d_fmap = accept_3d_fmap
        self.channel_last = channel_last
        self.register_buffer("zero", torch.tensor(0.0), persistent=False)
        self.return_zeros_for_masked_padding = return_zeros_for_masked_padding
        self.freeze_codebook = freeze_codebook
        self.search_mode = search_mode

        self.num_classes = num_classes
        if num_classes is not None:
            if heads != 1:
                raise ValueError(f"{_NAME}: num_classes (semantic codebook) needs heads=1, got heads={heads}")
            sizes = group_sizes_for(num_classes, codebook_size, group_sizes, None, 1)
            self.register_buffer("class_offsets", class_offsets_from_sizes(sizes), persistent=False)
        else:
            self.class_offsets = None

    # ------------------------------------------------------------------------------------------
    # The peer's properties and methods
    # ------------------------------------------------------------------------------------------
    @property
    def ema_update(self) -> bool:
        return self._ema_update

    @property
    def codebook(self) -> torch.Tensor:
        """[K, d] ([heads, K, d] with separate codebooks per head)."""
        embed = self._codebook.embed
        return embed if self.separate_codebook_per_head else embed[0]

    @codebook.setter
    def codebook(self, codes: torch.Tensor) -> None:
        if not self.separate_codebook_per_head:
            codes = codes.unsqueeze(0)
        self._codebook.embed.data.copy_(codes)

    def get_codes_from_indices(self, indices: torch.Tensor, project_out: bool = False) -> torch.Tensor:
        """Codes of indices, with the peer's shapes: [..., d] for one codebook (heads sharing one
        codebook: [b, ..., heads, d]); separate codebooks: indices [b, ..., heads] -> [b, ..., heads*d].
        Channel-first ([b, d, ...]) for channel_last=False and feature maps. project_out=True: the
        codes through project_out, i.e. get_output_from_indices."""
        if project_out:
            return self.get_output_from_indices(indices)
        if indices.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"{_NAME}.get_codes_from_indices: indices must be int32/int64, got {indices.dtype}")
        indices = indices.long()
        codebook = self.codebook
        if codebook.dim() == 2:
            codes = codebook[indices]
        else:
            h = codebook.shape[0]
            if indices.shape[-1] != h:
                raise ValueError(f"{_NAME}.get_codes_from_indices: indices {list(indices.shape)} must end with heads = {h}")
            head = torch.arange(h, device=indices.device)
            codes = codebook[head, indices]  # [b, ..., h, d]
            codes = codes.reshape(*codes.shape[:-2], -1)
        if not self.channel_last or self.accept_image_fmap or self.accept_3d_fmap:
            codes = codes.movedim(-1, 1)
        return codes

    def get_output_from_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """project_out of the codes: the forward's quantized output (eval mode) from its indices.
        Heads sharing one codebook are concatenated first, and feature maps are projected
        channel-last (where the peer's version of this method fails, this one follows forward)."""
        codes = self.get_codes_from_indices(indices)
        channel_first = not self.channel_last or self.accept_image_fmap or self.accept_3d_fmap
        if channel_first:
            codes = codes.movedim(1, -1)
        if self.heads > 1 and not self.separate_codebook_per_head:
            codes = codes.reshape(*codes.shape[:-2], -1)
        out = self.project_out(codes)
        return out.movedim(-1, 1) if channel_first else out

    def update_in_place_optimizer(self) -> None:
        """No in-place optimizer is supported (the constructor refuses one): nothing to step."""

    # ------------------------------------------------------------------------------------------
    # Forward
    # ------------------------------------------------------------------------------------------
    def forward(self, x, indices=None, mask=None, lens=None, topk=None, sample_codebook_temp=None,
                freeze_codebook=None, return_loss_breakdown=False, codebook_transform_fn=None,
                ema_update_weight=None, accum_ema_update=False, ema_update=None, *, labels=None):
        """The peer's forward: (quantized, indices, loss) or with return_loss_breakdown
        (quantized, indices, loss, LossBreakdown). labels (num_classes only): int token labels
        with the token shape ([b, n] / [b, h, w] / [b, d, h, w]), -1 = search all codes."""
        for arg, value in (("indices", indices), ("topk", topk), ("codebook_transform_fn", codebook_transform_fn),
                           ("ema_update_weight", ema_update_weight)):
            if value is not None:
                raise ValueError(f"{_NAME}.forward: {arg} is not supported by sgcvq.compat (leave it None)")
        if accum_ema_update:
            raise ValueError(f"{_NAME}.forward: accum_ema_update=True is not supported by sgcvq.compat")
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"{_NAME}: x must be a floating-point tensor, got "
                            f"{x.dtype if isinstance(x, torch.Tensor) else type(x).__name__}")
        orig_input, input_requires_grad = x, x.requires_grad
        freeze_codebook = self.freeze_codebook if freeze_codebook is None else freeze_codebook
        ema_update = self._ema_update if ema_update is None else bool(ema_update)
        if mask is not None and lens is not None:
            raise ValueError(f"{_NAME}: pass mask or lens, not both")
        if lens is not None:
            mask = torch.arange(x.shape[1], device=lens.device) < lens[:, None]

        only_one = x.dim() == 2
        fmap = self.accept_image_fmap or self.accept_3d_fmap
        expected = 4 if self.accept_image_fmap else 5 if self.accept_3d_fmap else 3
        if x.dim() != expected and not (only_one and not fmap):
            layout = ("[b, c, h, w]" if self.accept_image_fmap else "[b, c, d, h, w]" if self.accept_3d_fmap
                      else "[b, n, d] or [b, d]" if self.channel_last else "[b, d, n] or [b, d]")
            raise ValueError(f"{_NAME}: x is {list(x.shape)} but this quantizer takes {layout}")
        if mask is not None:
            if only_one or fmap:
                raise ValueError(f"{_NAME}: mask / lens need sequence input [b, n, d] (not feature maps or one token)")
            if self.heads > 1 or self.has_projections:
                raise ValueError(f"{_NAME}: mask / lens with heads > 1 or codebook_dim projections are not supported "
                                 "(vector-quantize-pytorch 1.32 compares the codes with the unprojected input there)")
        if only_one:
            x = x.unsqueeze(1)
        channel_dim = 1 if (fmap or (not self.channel_last and not only_one)) else -1
        if x.shape[channel_dim] != self.dim:
            raise ValueError(f"{_NAME}: x is {list(orig_input.shape)} but dim = {self.dim}")
        need_transpose = not self.channel_last and not fmap and not only_one
        spatial = None
        if fmap:
            spatial = tuple(x.shape[2:])
            x = x.flatten(2).transpose(1, 2)
        if need_transpose:
            x = x.transpose(1, 2)
            orig_input = orig_input.transpose(1, 2)
        b, n = x.shape[0], x.shape[1]
        dtype = x.dtype

        x = self.project_in(x)
        xh = self._split_heads(x)  # [c, B', n, d]
        if self.use_cosine_sim:
            xh = _l2norm(xh)

        token_labels = self._token_labels(labels, b, n, spatial)
        codes, index, sqdists, snapshot = self._quantize(xh, mask, freeze_codebook, ema_update, token_labels)
        quantize = codes.to(dtype)

        commit_loss = orthogonal_reg_loss = self.zero
        loss = self.zero
        if self.training:
            learnable = self.learnable_codebook and not freeze_codebook
            if self.has_commitment_loss:
                if mask is not None:
                    diff = (quantize if learnable else quantize.detach())[0] - orig_input
                    commit_loss = diff.pow(2)[mask].mean()
                else:
                    commit_loss = self._commitment(xh, index, sqdists, snapshot, learnable)
            if input_requires_grad and self.route_gradients_to_input:
                if self.rotation_trick:
                    quantize = _rotate_to(xh, quantize)
                elif self.directional_reparam:
                    quantize = _directional_reparam(xh, quantize, self.directional_reparam_variance)
                else:
                    quantize = _straight_through(xh, quantize)
            loss = torch.zeros((), device=x.device, requires_grad=True)
            if self.has_commitment_loss:
                loss = loss + commit_loss * self.commitment_weight
            if self.has_codebook_orthogonal_loss:
                orthogonal_reg_loss = self._orthogonal_loss(index)
                loss = loss + orthogonal_reg_loss * self.orthogonal_reg_weight

        quantize = self._merge_heads(quantize, b)  # [b, n, heads*d]
        embed_ind = self._merge_head_indices(index, b)  # [b, n] or [b, n, heads]
        quantize = self.project_out(quantize)
        if mask is not None:
            fill = torch.zeros_like(orig_input) if self.return_zeros_for_masked_padding else orig_input
            quantize = torch.where(mask[..., None], quantize, fill)
            embed_ind = torch.where(mask, embed_ind, -1)
        if need_transpose:
            quantize = quantize.transpose(1, 2)
        if fmap:
            quantize = quantize.transpose(1, 2).reshape(b, -1, *spatial)
            embed_ind = embed_ind.reshape(b, *spatial, *embed_ind.shape[2:])
        if only_one:
            quantize = quantize[:, 0]
            embed_ind = embed_ind[:, 0]
        if not return_loss_breakdown:
            return quantize, embed_ind, loss
        return quantize, embed_ind, loss, LossBreakdown(commit_loss, self.zero, orthogonal_reg_loss, self.zero)

    # ------------------------------------------------------------------------------------------
    # Heads and labels
    # ------------------------------------------------------------------------------------------
    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """[b, n, h*d] -> [c, B', n, d]: separate codebooks [h, b, n, d]; shared [1, b*h, n, d]
        (the peer's token order, which its random draws depend on)."""
        b, n = x.shape[:2]
        h = self.heads
        if h == 1:
            return x.unsqueeze(0)
        x = x.view(b, n, h, -1)
        if self.separate_codebook_per_head:
            return x.permute(2, 0, 1, 3)
        return x.permute(0, 2, 1, 3).reshape(1, b * h, n, -1)

    def _merge_heads(self, q: torch.Tensor, b: int) -> torch.Tensor:
        h = self.heads
        if h == 1:
            return q[0]
        if self.separate_codebook_per_head:
            return q.permute(1, 2, 0, 3).reshape(b, q.shape[2], -1)
        return q[0].view(b, h, q.shape[2], -1).permute(0, 2, 1, 3).reshape(b, q.shape[2], -1)

    def _merge_head_indices(self, index: torch.Tensor, b: int) -> torch.Tensor:
        h = self.heads
        if h == 1:
            return index[0]
        if self.separate_codebook_per_head:
            return index.permute(1, 2, 0)
        return index[0].view(b, h, -1).permute(0, 2, 1)

    def _token_labels(self, labels, b: int, n: int, spatial) -> torch.Tensor | None:
        if labels is None:
            return None
        if self.num_classes is None:
            raise ValueError(f"{_NAME}: labels need the semantic codebook: construct with num_classes=C")
        if not isinstance(labels, torch.Tensor) or labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise TypeError(f"{_NAME}: labels must be an integer tensor")
        if labels.numel() != b * n or labels.shape[0] != b:
            want = [b, *spatial] if spatial else [b, n]
            raise ValueError(f"{_NAME}: labels are {list(labels.shape)} but the tokens are {want}")
        flat = labels.reshape(-1).long()
        if bool(((flat < -1) | (flat >= self.num_classes)).any()):
            raise ValueError(f"{_NAME}: labels must be in [-1, {self.num_classes})")
        return flat

    # ------------------------------------------------------------------------------------------
    # The codebook: search, k-means, EMA, dead codes
    # ------------------------------------------------------------------------------------------
    def _quantize(self, xh, mask, freeze_codebook, ema_update, token_labels):
        """xh [c, B', n, d] -> codes [c, B', n, d] float32, index [c, B', n] int64, the search's
        sqdist per codebook (None where the search ran on augmented vectors) and the codebook as
        the search saw it (a copy when this step changes it in place, else None). In training it
        updates the codebook (EMA, dead-code expiry) after the search, as the peer does."""
        cb = self._codebook
        c, Bp, n, d = xh.shape
        flat = xh.detach().float().reshape(c, Bp * n, d)
        flat_mask = None
        if mask is not None:  # heads == 1 here: token order (b, n)
            flat_mask = mask.reshape(1, -1).expand(c, -1)
        if not bool(cb.initted):
            self._kmeans_init(flat, flat_mask)
        indices, codes, sqdists = [], [], []
        for h in range(c):
            index, sqdist = self._search(flat[h], cb.embed[h].detach(), token_labels)
            indices.append(index)
            sqdists.append(sqdist)
            codes.append(F.embedding(index, cb.embed[h] if cb.embed.requires_grad else cb.embed[h].detach()))
        if c == 1:  # no stack copy for one codebook
            index, codes = indices[0].view(1, Bp, n), codes[0].view(1, Bp, n, d).float()
        else:
            index = torch.stack(indices).view(c, Bp, n)
            codes = torch.stack(codes).view(c, Bp, n, d).float()
        updates = self.training and not freeze_codebook and (ema_update or self.has_dead_code_replacement)
        snapshot = cb.embed.detach().float().clone() if updates else None
        if updates:
            self._update_codebook(flat, index.view(c, -1), flat_mask, ema_update)
        return codes, index, sqdists, snapshot

    def _search(self, tokens: torch.Tensor, embed: torch.Tensor, token_labels=None):
        embed = embed.float()
        augmented = self.use_cosine_sim and self._codebook.embed.requires_grad
        if augmented:
            # the peer takes argmax x·e; a codebook moved by the optimizer (orthogonal regulariser)
            # is no longer unit-norm, so append sqrt(max||e||² − ||e||²) to the codes and 0 to the
            # tokens: ||x' − e'||² = ||x||² + max||e||² − 2 x·e has the same argmin
            sq = embed.pow(2).sum(-1)
            pad = (sq.max() - sq).clamp(min=0).sqrt()
            embed = torch.cat([embed, pad[:, None]], 1)
            tokens = torch.cat([tokens, tokens.new_zeros(tokens.shape[0], 1)], 1)
        offsets = self.class_offsets if token_labels is not None else None
        index, sqdist = nearest_code(tokens.contiguous(), embed.contiguous(), token_labels, offsets,
                                     mode=self.search_mode, check=False)
        return index, None if augmented else sqdist

    @torch.no_grad()
    def _update_codebook(self, flat, index, flat_mask, ema_update: bool) -> None:
        """The peer's update_codebook: EMA of counts and sums (masked tokens excluded), the codebook
        from them when ema_update, then dead-code expiry."""
        cb = self._codebook
        K = self.codebook_size
        for h in range(flat.shape[0]):
            idx = index[h]
            bins = K
            if flat_mask is not None:
                idx = torch.where(flat_mask[h], idx, K)  # masked tokens to a dropped extra bin
                bins = K + 1
            counts, sums = cluster_stats(idx, flat[h].contiguous(), bins, check=False)
            counts, sums = counts[:K], sums[:K]
            ema_statistics_(cb.cluster_size[h], cb.embed_avg[h], counts, sums, self.decay)
            if ema_update:
                # NOTE: 1.34.1's normalisation (no Laplace smoothing): eps·embed keeps an empty code
                # where it is instead of collapsing it to zero (1.32 smoothed the counts instead)
                embed = codebook_from_statistics("vqp_1_34", cb.cluster_size[h], cb.embed_avg[h], cb.embed.data[h],
                                                 self.eps)
                cb.embed.data[h] = _l2norm(embed) if self.use_cosine_sim else embed
        if self.has_dead_code_replacement:
            self._expire_codes(flat, flat_mask)

    @torch.no_grad()
    def _expire_codes(self, flat, flat_mask) -> None:
        """Codes whose EMA count is under dead_code_threshold_ratio × the mean count (per codebook)
        get random tokens of the batch, their count reset to reset_cluster_size_ratio × the mean;
        drawn from the generator exactly as the peer draws. With more dead codes than tokens, the
        smallest counts go first (ties in a random order), the rest wait for later steps."""
        cb = self._codebook
        expired = dead_codes(cb.cluster_size, ratio_of_mean=self.dead_code_threshold_ratio)
        if not bool(expired.any()):
            return
        samples_all = _l2norm(flat) if self.use_cosine_sim else flat
        mean_size = cb.cluster_size.mean(-1).clamp(min=self.eps)  # before any reset, as the peer
        for h in range(flat.shape[0]):
            samples = samples_all[h]
            if flat_mask is not None:
                samples = samples[flat_mask[h]]
            if samples.numel() == 0:
                continue
            dead = expired[h]
            num_samples, num_dead = samples.shape[0], int(dead.sum())
            if num_dead == 0:
                continue
            if num_dead > num_samples:  # the smallest counts now, the rest at later steps
                dead_idx = dead.nonzero(as_tuple=True)[0]
                dead_idx = dead_idx[torch.randperm(num_dead, device=samples.device)]
                dead_idx = dead_idx[cb.cluster_size[h, dead_idx].argsort(stable=True)[:num_samples]]
                dead = torch.zeros_like(dead)
                dead[dead_idx] = True
                num_dead = num_samples
            pick = torch.randperm(num_samples, device=samples.device)[:num_dead]
            sampled = samples[pick].to(cb.embed.dtype)
            reset = mean_size[h] * self.reset_cluster_size_ratio
            cb.embed.data[h][dead] = sampled
            cb.cluster_size[h][dead] = reset
            cb.embed_avg[h][dead] = sampled * reset

    @torch.no_grad()
    def _kmeans_init(self, flat, flat_mask) -> None:
        """The peer's k-means start (seeds drawn as the peer draws them), on nearest_code and
        cluster_stats. As in 1.34.1 it writes embed only (the statistics stay at zero), and an
        empty batch leaves the codebook uninitialised for the next one."""
        cb = self._codebook
        c, K = flat.shape[0], self.codebook_size
        if flat_mask is not None:
            flat = flat[flat_mask].view(c, -1, flat.shape[-1])
        num = flat.shape[1]
        if num == 0:
            return
        means = []
        for h in range(c):
            samples = flat[h].contiguous()
            if num >= K:
                seed = torch.randperm(num, device=samples.device)[:K]
            else:
                seed = torch.randint(0, num, (K,), device=samples.device)
            means.append(samples[seed])
        for h in range(c):
            means[h], _ = lloyd_steps(flat[h].contiguous(), means[h].contiguous(), self.kmeans_iters,
                                      normalize=self.use_cosine_sim, search_mode=self.search_mode,
                                      distributed=False)
        cb.embed.data.copy_(torch.stack(means))
        cb.initted.fill_(True)

    # ------------------------------------------------------------------------------------------
    # Losses
    # ------------------------------------------------------------------------------------------
    def _commitment(self, xh, index, sqdists, snapshot, learnable: bool) -> torch.Tensor:
        """mse(q, x) over every element of xh [c, B', n, d] (q: the codes the search picked, before
        this step's update), gradients to x (and to the codebook when it is learned), from the
        search's distances."""
        cb = self._codebook
        c, _, _, d = xh.shape
        loss = None
        for h, head in enumerate(xh.unbind(0)):  # unbind: one stack in backward, not a zeros per head
            tokens = head.reshape(-1, d)
            idx = index[h].reshape(-1)
            at_search = snapshot[h] if snapshot is not None else None
            sqdist = sqdists[h]
            if sqdist is None:
                codes = (at_search if at_search is not None else cb.embed[h].detach().float())[idx]
                sqdist = (tokens.detach().float() - codes).pow(2).sum(-1)
            embed = cb.embed[h] if learnable else cb.embed[h].detach()
            term = sqdist_loss(tokens, embed, idx, sqdist, 1.0, 1.0, 1.0 if learnable else 0.0, xh.numel(),
                               codes_at_search=at_search)
            loss = term if loss is None else loss + term
        return loss

    def _orthogonal_loss(self, index: torch.Tensor) -> torch.Tensor:
        codebook = self._codebook.embed
        if self.orthogonal_reg_active_codes_only:
            if self.heads > 1 and self.separate_codebook_per_head:
                raise ValueError(f"{_NAME}: orthogonal_reg_active_codes_only is not compatible with separate "
                                 "codebooks per head (as in the peer)")
            codebook = codebook[:, torch.unique(index)]
        num_codes = codebook.shape[-2]
        if self.orthogonal_reg_max_codes is not None and num_codes > self.orthogonal_reg_max_codes:
            keep = torch.randperm(num_codes, device=codebook.device)[: self.orthogonal_reg_max_codes]
            codebook = codebook[:, keep]
        # eq. (2) of arXiv 2112.00384: mean squared cosine similarity of the codes, minus 1/n
        h, n = codebook.shape[:2]
        unit = _l2norm(codebook)
        gram = unit @ unit.transpose(-1, -2)
        return gram.pow(2).sum() / (h * n * n) - 1.0 / n

    def extra_repr(self) -> str:
        s = f"dim={self.dim}, codebook_size={self.codebook_size}, codebook_dim={self.codebook_dim}, heads={self.heads}"
        s += f", decay={self.decay}, commitment_weight={self.commitment_weight}, rotation_trick={self.rotation_trick}"
        return s + (f", num_classes={self.num_classes}" if self.num_classes is not None else "")


def _dead_code_ratios(codebook_size, ratio, reset_ratio, threshold_ema_dead_code, reset_cluster_size):
    """The peer's (1.34.1 Codebook) reading of the dead-code arguments: the deprecated absolute
    threshold and reset size become ratios (a value >= 1 is divided by codebook_size, a smaller one
    is taken as a ratio already), each with a warning; the reset ratio defaults to the threshold's."""
    if threshold_ema_dead_code is not None:
        warnings.warn(f"{_NAME}: threshold_ema_dead_code is deprecated in vector-quantize-pytorch "
                      f"{PEER_RELEASE}: use dead_code_threshold_ratio (a ratio in [0, 1) of the mean cluster "
                      "size); converted as the peer converts it", FutureWarning, stacklevel=3)
        t = threshold_ema_dead_code
        ratio = t / codebook_size if t >= 1.0 else t
    if reset_cluster_size is not None:
        warnings.warn(f"{_NAME}: reset_cluster_size is deprecated in vector-quantize-pytorch {PEER_RELEASE}: "
                      "use reset_cluster_size_ratio; converted as the peer converts it", FutureWarning, stacklevel=3)
        r = reset_cluster_size
        reset_ratio = r / codebook_size if r >= 1.0 else r
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= ratio < 1.0:
        raise ValueError(f"{_NAME}: dead_code_threshold_ratio must be a number in [0, 1), got {ratio!r}")
    reset_ratio = ratio if reset_ratio is None else reset_ratio
    if isinstance(reset_ratio, bool) or not isinstance(reset_ratio, (int, float)) or reset_ratio < 0:
        raise ValueError(f"{_NAME}: reset_cluster_size_ratio must be a number >= 0, got {reset_ratio!r}")
    return float(ratio), float(reset_ratio)


def _l2norm(t: torch.Tensor) -> torch.Tensor:
    return F.normalize(t, p=2, dim=-1, eps=1e-6)


def _straight_through(x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """x + sg(q − x): the value of q (up to rounding, as the peer's), the gradient of x."""
    with torch.no_grad():
        delta = q.detach() - x.detach()
    return x + delta


def _directional_reparam(x: torch.Tensor, q: torch.Tensor, variance: float) -> torch.Tensor:
    """DiVeQ (openreview KRVnpTbx7R): x + ||q − x|| · direction of (q − x + noise), the direction
    constant for autograd, so the codebook (through ||q − x||) and x both get gradients. The noise
    is one randn_like draw of x's shape, as the peer's."""
    error = q - x
    noisy = error + math.sqrt(variance) * torch.randn_like(error)
    return x + _l2norm(noisy).detach() * error.norm(dim=-1, keepdim=True)


def _rotate_to(src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    """The rotation trick (arXiv 2410.06424, §4.2): tgt's value, with src's gradient rotated by the
    rotation that takes src's direction to tgt's and scaled by ||tgt|| / ||src||."""
    shape = src.shape
    out = _RotationTrick.apply(src.reshape(-1, shape[-1]), tgt.detach().reshape(-1, shape[-1]))
    return out.view(shape)


class _RotationTrick(torch.autograd.Function):
    """out = r · R x with R = I − 2 w wᵀ + 2 q uᵀ, u = x/||x||, q = e/||e||, w = (u+q)/||u+q||,
    r = ||e||/||x|| (u, q, w, r constants for autograd: the peer's detaches), row by row.

    R x and Rᵀ g are combinations of x and e with per-row scalars (u and q are x and e scaled), so
    forward and backward are three row dot products and one axpy each, and only x, e and three
    [M] scalars are kept: no [M, d] u, q, w temporaries. Norm clamps (1e-6) as the peer's.
    """

    @staticmethod
    def forward(ctx, x, e):
        xf, ef = x.float(), e.float()
        nx = xf.norm(dim=-1).clamp(min=1e-6)  # ||x|| as the peer divides by it
        ne_raw = ef.norm(dim=-1)
        ne = ne_raw.clamp(min=1e-6)
        xx = xf.pow(2).sum(-1)
        xe = (xf * ef).sum(-1)
        # ||u + q||, F.normalize's eps
        uu, qq, uq = xx / (nx * nx), ne_raw.pow(2) / (ne * ne), xe / (nx * ne)
        s = (uu + qq + 2.0 * uq).clamp(min=0).sqrt().clamp(min=1e-6)
        r = ne_raw / nx
        x_dot_u = xx / nx
        x_dot_w = (x_dot_u + xe / ne) / s
        alpha = r * (1.0 - 2.0 * x_dot_w / (s * nx))
        beta = r * (2.0 * x_dot_u - 2.0 * x_dot_w / s) / ne
        ctx.save_for_backward(x, e, nx, ne, s, r)
        return (alpha[:, None] * xf + beta[:, None] * ef).to(x.dtype)

    @staticmethod
    def backward(ctx, g):
        x, e, nx, ne, s, r = ctx.saved_tensors
        xf, ef, gf = x.float(), e.float(), g.float()
        g_dot_u = (gf * xf).sum(-1) / nx
        g_dot_q = (gf * ef).sum(-1) / ne
        g_dot_w = (g_dot_u + g_dot_q) / s
        # r (g − 2 (g·w) w + 2 (g·q) u), w = (x/nx + e/ne) / s
        cx = r * (2.0 * g_dot_q - 2.0 * g_dot_w / s) / nx
        ce = -2.0 * r * g_dot_w / (s * ne)
        grad = r[:, None] * gf + cx[:, None] * xf + ce[:, None] * ef
        return grad.to(x.dtype), None
