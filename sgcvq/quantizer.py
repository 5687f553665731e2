"""FastSemanticQuantizer: the semantic-guided clustering vector quantizer as one nn.Module.

docs/method.md §1, steps 1-10, on the project's own ops (`sgcvq.nearest_code`,
`sgcvq.cluster_stats`, `sgcvq.ema_update`, which choose the backend):

    vq = FastSemanticQuantizer(dim=256, codebook_size=8192, num_classes=19)
    quantized, indices, loss = vq(x, labels)      # x [B, N, D] (or [B, D, H, W], channel_last=False)

Numerics: the search runs in float32 whatever the input dtype (bf16/fp16 inputs are upcast, which
is exact; float64 inputs are rounded to float32 for the search only); codebook and statistics are
float32 buffers; `quantized` has the input's dtype and is in the caller's (unscaled) space.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from . import codebook_rebalance as rebalance
from .distributed import all_reduce_flat, broadcast_from_rank0
from .ema_codebook import CodeUsage, dead_codes
from .kmeans import kmeans_per_group
from .ops import MODES, cluster_stats, ema_update, nearest_code
from .semantic import (
    class_offsets_from_sizes,
    code_classes,
    group_sizes_for,
    pool_labels,
    sample_class_tokens,
    update_class_centers,
)

__all__ = ["FastSemanticQuantizer"]

_NAME = "FastSemanticQuantizer"
_FLOAT_INPUTS = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


class FastSemanticQuantizer(CodeUsage):
    """Semantic-guided clustering VQ with an EMA codebook, fused search and in-class re-seeding.

    Args:
        dim: D, the feature size of a token.
        codebook_size: K, the number of codes.
        num_classes: C. None: plain EMA VQ (one group of K codes; labels are not accepted).
            An int: the semantic codebook, class c owns codes [class_offsets[c], class_offsets[c+1]).
        group_sizes: "equal", "frequency" (∝ class_frequencies ** 0.5, at least
            min_codes_per_class) or an explicit list of C sizes summing to K.
        decay, eps: EMA decay γ and Laplace smoothing ε (docs/method.md §1.6).
        commitment_weight: β of the commitment loss β · mean ||x − sg(q)||².
        threshold_dead: a code whose EMA count falls under this is re-seeded in training (0: off).
            Counts are tokens per step, so keep it below the expected tokens per code per step
            (N / K, or per group). With the start state N = 1 and the default 2.0, the first
            training step re-seeds every code from the batch: a data-driven start.
        kmeans_init: run per-group k-means (kmeans_iters Lloyd steps) on the first training batch
            (semantic mode: the first labelled one; tokens labelled -1 take no part).
        level_weights: pyramid weights w_l (docs/method.md §1.4). The levels are consecutive channel
            blocks of x: sizes `level_dims` (summing to dim), or an equal split of dim when
            level_dims is None. Internally x_l is scaled by sqrt(w_l), so the search distance is
            Σ_l w_l ||x_l − e_l||²; the codebook and class_centers live in that scaled space,
            while `quantized`, get_codes_from_indices and decode_indices return unscaled values.
        semantic_loss_weight: λ of λ · mean ||x_i − sg(μ_{s_i})||² over labelled tokens (§1.9).
        channel_last: True for x [B, ..., D]; False for feature maps [B, D, H, W].
        class_frequencies: C non-negative numbers, for group_sizes="frequency".
        min_codes_per_class: lower bound on a group's size with group_sizes="frequency".
        level_dims: channel sizes of the pyramid levels (see level_weights).
        check_finite: raise on NaN/Inf features (one host sync per call; skipped under
            torch.compile).
        check_labels: raise on labels outside [-1, C) or ignore_label (pixel maps: [0, C) or ignore_label); one
            host sync, shared with check_finite; skipped under torch.compile.
        metrics_window: steps over which metrics() counts a code as active.
        ignore_label: the "no class" value in pixel label maps (255).
        search_mode: "exact" or "fast_exact" (both exact; see sgcvq.nearest_code).
        max_idle_steps: with re-seeding on, a code that has won no token for this many training
            steps (since its last token or re-seed) is dead too, whatever its EMA count: the count
            of an abandoned popular code takes ~log(N / threshold_dead) / (1 - decay) steps to
            decay (hundreds at 0.99). 0 turns this criterion off.
        reseed_noise: std of the noise added to μ_c when a class has no token in the batch,
            relative to the batch's RMS quantization error per channel.
        reseed_split: a dead code takes the midpoint between a token of its class and that token's
            code, the token drawn with probability ∝ its squared error (k-means++'s D² rule): it
            splits a loaded cell; its count restarts at threshold_dead / decay^max_idle_steps, so it
            has max_idle_steps steps to win a token. False: a uniformly drawn token of the class,
            count restarting at threshold_dead (docs/method.md §1.8).
        rebalance_every: semantic mode: every this many training steps, codes move between class
            groups toward sizes ∝ each group's quantization error per step (EMA), a donor's least
            used codes first, re-seeded in their new group; the codebook, its EMA state and
            class_offsets are permuted together so groups stay contiguous (sgcvq/codebook_rebalance.py).
            0: group sizes fixed at construction (docs/method.md §1.2).
        rebalance_rate: the fraction of the gap to the target sizes closed at each rebalance.

    Buffers (float32 unless said): codebook [K, D], cluster_size [K], embed_sum [K, D],
    class_offsets [C+1] int64, class_centers [C, D], class_counts [C] (EMA of tokens per step),
    and the metric counters steps (int64), code_last_used [K] int64 (last step with a token),
    code_last_event [K] int64 (last step with a token or a re-seed), last_counts [K],
    codes_reseeded (int64), kmeans_done (bool). In plain mode C = 1 (one group, the class centre
    is the EMA mean token, the re-seeding fallback).
    """

    def __init__(
        self,
        dim: int,
        codebook_size: int,
        num_classes: int | None = None,
        group_sizes: str | Sequence[int] = "equal",
        decay: float = 0.99,
        eps: float = 1e-5,
        commitment_weight: float = 0.25,
        threshold_dead: float = 2.0,
        kmeans_init: bool = False,
        kmeans_iters: int = 10,
        level_weights: Sequence[float] | None = None,
        semantic_loss_weight: float = 0.0,
        channel_last: bool = True,
        *,
        class_frequencies: Sequence[float] | torch.Tensor | None = None,
        min_codes_per_class: int = 1,
        level_dims: Sequence[int] | None = None,
        check_finite: bool = True,
        check_labels: bool = True,
        metrics_window: int = 100,
        ignore_label: int = 255,
        search_mode: str = "exact",
        max_idle_steps: int = 100,
        reseed_noise: float = 0.1,
        reseed_split: bool = False,
        rebalance_every: int = 0,
        rebalance_rate: float = 0.5,
    ):
        super().__init__()
        _check_int("dim", dim, 1)
        _check_int("codebook_size", codebook_size, 1)
        if num_classes is not None:
            _check_int("num_classes", num_classes, 1)
            if num_classes > codebook_size:
                raise ValueError(
                    f"{_NAME}: num_classes {num_classes} > codebook_size {codebook_size}: every class needs a code"
                )
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"{_NAME}: decay must be in [0, 1], got {decay}")
        if eps < 0:
            raise ValueError(f"{_NAME}: eps must be >= 0, got {eps}")
        if threshold_dead < 0:
            raise ValueError(f"{_NAME}: threshold_dead must be >= 0 (0 turns re-seeding off), got {threshold_dead}")
        _check_int("kmeans_iters", kmeans_iters, 0)
        _check_int("metrics_window", metrics_window, 1)
        _check_int("max_idle_steps", max_idle_steps, 0)
        _check_int("rebalance_every", rebalance_every, 0)
        if not 0.0 < rebalance_rate <= 1.0:
            raise ValueError(f"{_NAME}: rebalance_rate must be in (0, 1], got {rebalance_rate}")
        if search_mode not in MODES:
            raise ValueError(f"{_NAME}: search_mode must be one of {MODES}, got {search_mode!r}")

        self.dim = dim
        self.codebook_size = codebook_size
        self.num_classes = num_classes
        self.semantic = num_classes is not None
        self.decay = float(decay)
        self.eps = float(eps)
        self.commitment_weight = float(commitment_weight)
        self.threshold_dead = float(threshold_dead)
        self.kmeans_init = bool(kmeans_init)
        self.kmeans_iters = kmeans_iters
        self.semantic_loss_weight = float(semantic_loss_weight)
        self.channel_last = bool(channel_last)
        self.check_finite = bool(check_finite)
        self.check_labels = bool(check_labels)
        # defer_checks (set by the trainer on a GPU): the two checks above run on the device and
        # are read by `raise_deferred_checks()` at log time, so a training step never waits for
        # the device. Bad values meanwhile cannot index out of range (labels outside the range
        # search all codes, indices are clamped) and the next read raises the same ValueError.
        self.defer_checks = False
        self._deferred_bad: torch.Tensor | None = None  # [2] bool: non-finite x, labels out of range
        self.metrics_window = metrics_window
        self.ignore_label = int(ignore_label)
        self.search_mode = search_mode
        self.max_idle_steps = max_idle_steps
        self.reseed_noise = float(reseed_noise)
        self.reseed_split = bool(reseed_split)
        self.rebalance_every = rebalance_every if self.semantic and num_classes > 1 else 0
        self.rebalance_rate = float(rebalance_rate)
        self.min_codes_per_class = min_codes_per_class

        C = num_classes if self.semantic else 1
        if self.semantic:
            sizes = group_sizes_for(C, codebook_size, group_sizes, class_frequencies, min_codes_per_class)
        else:
            sizes = [codebook_size]
        self.group_sizes = sizes
        offsets = class_offsets_from_sizes(sizes)

        self.level_dims, self.level_weights, scale = _channel_scale(dim, level_weights, level_dims)

        codebook = torch.empty(codebook_size, dim)
        nn.init.kaiming_uniform_(codebook)  # the same start as vector-quantize-pytorch
        self.register_buffer("codebook", codebook)
        self.register_buffer("cluster_size", torch.ones(codebook_size))  # docs/method.md §1.6: N = 1, M = E
        self.register_buffer("embed_sum", codebook.clone())
        self.register_buffer("class_offsets", offsets)
        self.register_buffer("class_centers", torch.zeros(C, dim))
        self.register_buffer("class_counts", torch.zeros(C))
        self._init_usage(codebook_size, metrics_window)  # steps, code_last_used, last_counts
        self.register_buffer("code_last_event", torch.zeros(codebook_size, dtype=torch.int64))
        self.register_buffer("codes_reseeded", torch.zeros((), dtype=torch.int64))
        self.register_buffer("kmeans_done", torch.tensor(not self.kmeans_init))
        if self.rebalance_every:  # only then: the state_dict keys of fixed groups stay as they were
            self.register_buffer("group_error", torch.zeros(C))  # EMA of each group's error per step
        # derived from the constructor arguments: not part of the state dict
        self.register_buffer("code_class", code_classes(offsets), persistent=False)
        self.register_buffer("channel_scale", scale, persistent=False)
        self._scaled = scale is not None and bool((scale != 1).any())
        # Python mirror of kmeans_done, so the training step does not read a buffer on the host;
        # None = "read the buffer once" (after construction or load_state_dict)
        self._kmeans_pending: bool | None = self.kmeans_init
        self._host_steps: int | None = None  # Python mirror of steps for the rebalance schedule
        self.register_load_state_dict_post_hook(_forget_kmeans_flag)
        self.register_load_state_dict_post_hook(_groups_from_offsets)

    # ----------------------------------------------------------------------------------------
    # Public API
    # ----------------------------------------------------------------------------------------
    def forward(
        self, x: torch.Tensor, labels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Quantize x; in training mode also update the codebook (EMA, class centres, re-seeding).

        Args:
            x: channel_last: [B, ..., D] (e.g. [B, N, D] or [B, H, W, D]); otherwise [B, D, ...]
                (e.g. [B, D, H, W]). float32, bfloat16, float16 or float64.
            labels: None, or int labels of the tokens with x's leading shape ([B, N] /
                [B, H, W]) in [-1, C) (-1 or ignore_label = no class: searches all codes), or pixel label maps
                [B, H*f, W*f] (values in [0, C) or ignore_label) pooled by majority vote over each
                f x f cell (ties -> lowest class; no labelled pixel -> -1). For x [B, N, D] a pixel
                map [B, Hp, Wp] needs N = (Hp/f)(Wp/f) for one integer f; tokens are taken as a
                row-major h x w grid.

        Returns:
            quantized: x's shape and dtype; forward value = the chosen code (unscaled), gradient
                = identity (straight-through).
            indices: int64, x's token shape ([B, N] or [B, H, W]).
            loss: scalar (float32; float64 for float64 input): commitment loss plus the
                semantic loss when semantic_loss_weight > 0. In eval mode too: unlike
                vector-quantize-pytorch (zero in eval), the value is kept as the validation
                quantization error, and it costs nothing (the search returns the distances). For
                the peer's zero, use sgcvq.compat.VectorQuantize.
        """
        tokens, token_shape = self._tokens(x)
        grid = self._validate_labels(labels, x, token_shape)  # None: token labels (or no labels)
        if not torch.compiler.is_compiling() and (self.check_finite or (self.check_labels and labels is not None)):
            # before pooling: the vote would hide out-of-range pixels
            self._check_values(tokens, labels, grid is not None)
        token_labels = None
        if labels is not None:
            if grid is None:  # token labels; ignore_label (a pixel map at f = 1) means -1 too
                token_labels = labels.reshape(-1).to(torch.int64)
                # out-of-range values only get here with check_labels=False: never index with them
                valid = (token_labels >= 0) & (token_labels < self.num_classes) & (token_labels != self.ignore_label)
                token_labels = torch.where(valid, token_labels, -1)
            else:
                token_labels = pool_labels(labels, grid, self.num_classes, self.ignore_label).reshape(-1)

        xs = tokens.detach().float()
        if self._scaled:
            xs = xs * self.channel_scale
        # semantic k-means needs labels: it waits for the first labelled training batch
        if (self.training and self.kmeans_init and (token_labels is not None or not self.semantic)
                and self._kmeans_is_pending()):
            self._kmeans(xs, token_labels)

        with torch.no_grad():
            search_labels = token_labels if (self.semantic and token_labels is not None) else None
            index, sqdist = nearest_code(
                xs,
                self.codebook,
                search_labels,
                self.class_offsets if search_labels is not None else None,
                mode=self.search_mode,
                check=False,
            )
            if self.defer_checks:
                # NaN/Inf tokens (found at the next raise_deferred_checks) may leave a kernel's
                # initial -1: keep every index a valid row for the gathers and statistics below.
                index = index.clamp(0, self.codebook.shape[0] - 1)
            codes = self.codebook[index]  # [M, D] float32, before this step's EMA update

        quantized = codes / self.channel_scale if self._scaled else codes
        quantized = quantized.to(tokens.dtype)
        numel = max(tokens.numel(), 1)
        if tokens.dtype == torch.float64:
            # float64 (gradcheck): the loss in float64 from the tokens; the float32 sqdist would
            # be too coarse for finite differences
            xw = tokens * self.channel_scale.double() if self._scaled else tokens
            loss = self.commitment_weight * (xw - codes.double()).pow(2).sum() / numel
            # NOTE: q + (x - sg(x)) rather than x + sg(q - x): the forward value is exactly the
            # code (x + (q - x) rounds), the gradient is the same identity.
            quantized = quantized + (tokens - tokens.detach())
        else:
            # the search already returned ||x_i - e_k||^2 (weighted): the loss value is free and
            # its gradient is one fused pass in backward
            commitment = (self.commitment_weight / numel) * sqdist.sum()
            quantized, loss = _StraightThrough.apply(
                tokens, quantized, codes, commitment, self.channel_scale if self._scaled else None,
                2.0 * self.commitment_weight / numel,
            )
        if self.semantic_loss_weight > 0 and token_labels is not None:
            loss = loss + self._semantic_loss(tokens, token_labels)
        if self.training:
            self._train_step(xs, index, sqdist, token_labels)
        return self._untokens(quantized, token_shape), index.view(token_shape), loss

    def get_codes_from_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """Codes [*indices.shape, D] float32 (unscaled, the caller's space) of int indices in [0, K)."""
        if indices.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"{_NAME}.get_codes_from_indices: indices must be int32/int64, got {indices.dtype}")
        codes = self.codebook[indices.to(torch.int64)]
        return codes / self.channel_scale if self._scaled else codes

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """Quantized features from indices: [B, N] -> [B, N, D]; [B, H, W] -> [B, H, W, D]
        (channel_last) or [B, D, H, W] (channel_last=False). float32."""
        codes = self.get_codes_from_indices(indices)
        if self.channel_last:
            return codes
        return codes.movedim(-1, 1).contiguous()

    def get_output_from_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """vector-quantize-pytorch's name for decode_indices: the forward's `quantized` value
        (float32) from its indices. There is no output projection here, so it is decode_indices."""
        return self.decode_indices(indices)

    @torch.no_grad()
    def metrics(self) -> dict:
        """Code usage over the recent training steps (reads the buffers: one host sync).

        active_fraction: codes assigned at least one token in the last metrics_window steps / K;
        perplexity: exp(entropy) of the last training step's code counts (summed over ranks);
        per_class_usage: active fraction of each class's group (semantic mode);
        codes_reseeded: dead codes re-seeded so far; steps: training steps so far.
        """
        out = {**super().metrics(), "codes_reseeded": int(self.codes_reseeded)}
        if self.semantic:
            active = self._active_codes()
            per_class = torch.zeros(len(self.group_sizes), device=active.device)
            per_class.index_add_(0, self.code_class, active.float())
            sizes = (self.class_offsets[1:] - self.class_offsets[:-1]).float()  # groups may move
            out["per_class_usage"] = (per_class / sizes).tolist()
        return out

    def _apply(self, fn, *args, **kwargs):
        # NOTE: model.half() / model.to(torch.bfloat16) must not demote the codebook and the EMA
        # statistics: the ops accumulate into float32 buffers and the search upcasts x instead.
        super()._apply(fn, *args, **kwargs)
        for name, buf in self._buffers.items():
            if buf is not None and buf.is_floating_point() and buf.dtype != torch.float32:
                self._buffers[name] = buf.float()
        return self

    def extra_repr(self) -> str:
        s = f"dim={self.dim}, codebook_size={self.codebook_size}, num_classes={self.num_classes}"
        s += f", decay={self.decay}, commitment_weight={self.commitment_weight}, threshold_dead={self.threshold_dead}"
        if self.level_weights is not None:
            s += f", level_dims={self.level_dims}, level_weights={self.level_weights}"
        return s

    # ----------------------------------------------------------------------------------------
    # Shapes and checks
    # ----------------------------------------------------------------------------------------
    def _tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        """x -> tokens [M, D] (a view where possible) and the token shape (B, ...)."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{_NAME}: x must be a torch.Tensor, got {type(x).__name__}")
        if x.dtype not in _FLOAT_INPUTS:
            raise TypeError(f"{_NAME}: x must be float32, bfloat16, float16 or float64, got {x.dtype}")
        if self.channel_last:
            if x.dim() < 2 or x.shape[-1] != self.dim:
                raise ValueError(
                    f"{_NAME}: x is {list(x.shape)} but channel_last=True expects [B, ..., D] with D = dim = {self.dim}"
                )
            return x.reshape(-1, self.dim), tuple(x.shape[:-1])
        if x.dim() < 3 or x.shape[1] != self.dim:
            raise ValueError(
                f"{_NAME}: x is {list(x.shape)} but channel_last=False expects [B, D, H, W] with D = dim = {self.dim}"
            )
        token_shape = (x.shape[0],) + tuple(x.shape[2:])
        return x.movedim(1, -1).reshape(-1, self.dim), token_shape

    def _untokens(self, q: torch.Tensor, token_shape: tuple[int, ...]) -> torch.Tensor:
        q = q.view(*token_shape, self.dim)
        return q if self.channel_last else q.movedim(-1, 1)

    def _validate_labels(self, labels, x: torch.Tensor, token_shape: tuple[int, ...]) -> tuple[int, int] | None:
        """Type/shape checks of labels; the token grid (h, w) for a pixel label map, else None."""
        if labels is None:
            return None
        if not self.semantic:
            raise ValueError(f"{_NAME}: labels were given but num_classes is None (plain VQ); pass num_classes=C")
        if not isinstance(labels, torch.Tensor):
            raise TypeError(f"{_NAME}: labels must be a torch.Tensor, got {type(labels).__name__}")
        if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
            raise TypeError(f"{_NAME}: labels must be an integer tensor, got {labels.dtype}")
        if labels.device != x.device:
            raise ValueError(f"{_NAME}: labels are on {labels.device} but x is on {x.device}")
        if tuple(labels.shape) == token_shape:
            return None
        return self._pixel_grid(labels, token_shape)

    def _pixel_grid(self, labels: torch.Tensor, token_shape: tuple[int, ...]) -> tuple[int, int]:
        """The token grid (h, w) of a pixel label map [B, h*f, w*f], or a clear error."""
        bad = ValueError(
            f"{_NAME}: labels are {list(labels.shape)} but tokens are {list(token_shape)}: labels must be "
            f"token labels {list(token_shape)} or pixel maps [B, h*f, w*f] at an integer multiple f of the token grid"
        )
        if labels.dim() != 3 or labels.shape[0] != token_shape[0] or len(token_shape) not in (2, 3):
            raise bad
        Hp, Wp = labels.shape[1], labels.shape[2]
        if len(token_shape) == 3:
            h, w = token_shape[1], token_shape[2]
            if h == 0 or w == 0 or Hp % h or Wp % w or Hp // h != Wp // w:
                raise bad
            return h, w
        n = token_shape[1]  # [B, N, D]: a row-major h x w grid with one f on both axes
        if n == 0 or (Hp * Wp) % n:
            raise bad
        f = round(math.sqrt((Hp * Wp) // n))
        if f == 0 or f * f * n != Hp * Wp or Hp % f or Wp % f:
            raise bad
        return Hp // f, Wp // f

    def _check_values(self, tokens: torch.Tensor, labels: torch.Tensor | None, pixel_map: bool) -> None:
        """Finite features and labels in range, with one host sync for both."""
        flags = []
        if self.check_finite:
            lo, hi = torch.aminmax(tokens.detach())  # NaN propagates; one pass, no bool tensor
            flags.append(~(torch.isfinite(lo) & torch.isfinite(hi)))
        check_labels = self.check_labels and labels is not None and labels.numel() > 0
        if check_labels:
            C, lab = self.num_classes, labels.to(torch.int64)
            if pixel_map:
                ok = ((lab >= 0) & (lab < C)) | (lab == self.ignore_label)
            else:
                ok = (lab >= -1) & (lab < C) | (lab == self.ignore_label)
            flags.append(~ok.all())
        if not flags:
            return
        if self.defer_checks:
            false = torch.zeros((), dtype=torch.bool, device=tokens.device)
            now = torch.stack([flags[0] if self.check_finite else false, flags[-1] if check_labels else false])
            self._deferred_bad = now if self._deferred_bad is None else self._deferred_bad | now
            return
        bad = torch.stack(flags).tolist()
        if self.check_finite and bad[0]:
            raise ValueError(f"{_NAME}: x contains NaN or Inf (check_finite=False skips this check)")
        if check_labels and bad[-1]:
            lo, hi = int(labels.min()), int(labels.max())
            allowed = (f"[0, {self.num_classes}) or ignore_label {self.ignore_label} (pixel label map)"
                       if pixel_map else f"[-1, {self.num_classes}) or ignore_label {self.ignore_label} "
                       "(token labels; -1 = no class)")
            raise ValueError(f"{_NAME}: labels must be in {allowed}; found values in [{lo}, {hi}]")

    def raise_deferred_checks(self) -> None:
        """With defer_checks: raise the ValueError the checks found since the last call (one
        host read), and start over. A no-op when nothing was checked."""
        pending, self._deferred_bad = self._deferred_bad, None
        if pending is None:
            return
        nonfinite, bad_labels = pending.tolist()
        if nonfinite:
            raise ValueError(f"{_NAME}: x contained NaN or Inf in a call since the last check "
                             "(check_finite=False skips this check)")
        if bad_labels:
            raise ValueError(f"{_NAME}: labels outside [-1, {self.num_classes}) (token labels) or "
                             f"[0, {self.num_classes}) (pixel maps), other than ignore_label "
                             f"{self.ignore_label}, in a call since the last check")

    # ----------------------------------------------------------------------------------------
    # Losses
    # ----------------------------------------------------------------------------------------
    def _semantic_loss(self, tokens: torch.Tensor, token_labels: torch.Tensor) -> torch.Tensor:
        """λ · mean ||x_i − sg(μ_{s_i})||² over labelled tokens (mean over tokens and channels,
        in the weighted space); 0 when the batch has no labelled token."""
        dtype = torch.float64 if tokens.dtype == torch.float64 else torch.float32
        xw = tokens.to(dtype)
        if self._scaled:
            xw = xw * self.channel_scale.to(dtype)
        labelled = token_labels >= 0
        mu = self.class_centers[token_labels.clamp(min=0)].to(dtype)  # a buffer: no gradient
        per_token = (xw - mu).pow(2).sum(dim=1) * labelled
        denom = labelled.sum().clamp(min=1) * self.dim
        return self.semantic_loss_weight * per_token.sum() / denom

    # ----------------------------------------------------------------------------------------
    # Training-mode updates
    # ----------------------------------------------------------------------------------------
    def _kmeans_is_pending(self) -> bool:
        if self._kmeans_pending is None:
            self._kmeans_pending = not bool(self.kmeans_done)
        return self._kmeans_pending

    @torch.no_grad()
    def _kmeans(self, xs: torch.Tensor, token_labels: torch.Tensor | None) -> None:
        labels = token_labels if self.semantic else None
        codebook, counts = kmeans_per_group(
            xs, labels, self.class_offsets if labels is not None else None, self.code_class,
            self.codebook, self.kmeans_iters,
        )
        # Start the EMA from the k-means clusters: N = tokens per code (at least 1, so an empty
        # cluster keeps its seed: e = M / N), M = E · N.
        size = counts.clamp(min=1.0)
        self.codebook.copy_(codebook)
        self.cluster_size.copy_(size)
        self.embed_sum.copy_(codebook * size[:, None])
        self.kmeans_done.fill_(True)
        self._kmeans_pending = False

    @torch.no_grad()
    def _train_step(self, xs: torch.Tensor, index: torch.Tensor, sqdist: torch.Tensor,
                    token_labels: torch.Tensor | None) -> None:
        K, C = self.codebook_size, self.class_centers.shape[0]
        counts, sums = cluster_stats(index, xs, K, check=False)
        if self.semantic and token_labels is not None:
            # -1 tokens go to an extra bin C that is dropped
            bins = torch.where(token_labels < 0, torch.full_like(token_labels, C), token_labels)
            class_counts, class_sums = cluster_stats(bins, xs, C + 1, check=False)
            class_counts, class_sums = class_counts[:C], class_sums[:C]
        elif self.semantic:
            class_counts, class_sums = xs.new_zeros(C), xs.new_zeros(C, self.dim)
        else:  # plain VQ: one class, the mean token (the re-seeding fallback)
            class_counts = xs.new_full((1,), float(xs.shape[0]))
            class_sums = xs.sum(dim=0, keepdim=True)
        err = sqdist.sum().view(1)
        n_tokens = xs.new_full((1,), float(xs.shape[0]))
        stats = [counts, sums, class_counts, class_sums, err, n_tokens]
        if self.rebalance_every:
            stats.append(rebalance.group_errors(index, sqdist, self.code_class, C))
        # ONE all-reduce per step for every statistic (docs/method.md §4)
        counts, sums, class_counts, class_sums, err, n_tokens, *group_err = all_reduce_flat(stats)
        ema_update(self.cluster_size, self.embed_sum, self.codebook, counts, sums, self.decay, self.eps)
        update_class_centers(self.class_centers, self.class_counts, class_counts, class_sums, self.decay)

        self._record(counts)
        self.code_last_event.copy_(torch.maximum(self.code_last_event, self.code_last_used))
        # split seeds from this step's assignment (before a rebalance renumbers the codes)
        seeds = rebalance.split_targets(xs, index, self.codebook) if self.reseed_split else xs
        moved = None
        if self.rebalance_every:
            # a fast EMA: a group's error mass sums hundreds of tokens a step, it is not noisy
            self.group_error.mul_(0.9).add_(group_err[0], alpha=0.1)
            if self._host_steps is None:  # after construction or a load: read the buffer once
                self._host_steps = int(self.steps)
            else:
                self._host_steps += 1
            if self._host_steps % self.rebalance_every == 0:  # one host read every rebalance_every steps
                moved = self._rebalance()
        if self.threshold_dead > 0 or moved is not None:
            rms = (err / (n_tokens.clamp(min=1) * self.dim)).sqrt()
            self._reseed(seeds, token_labels, rms, sqdist if self.reseed_split else None, moved)

    @torch.no_grad()
    def _rebalance(self) -> torch.Tensor | None:
        """Move codes between class groups toward sizes ∝ error mass; [K] bool of the moved codes
        (in the new order), or None when nothing moved. Deterministic from buffers that are equal
        on every rank."""
        sizes = (self.class_offsets[1:] - self.class_offsets[:-1]).tolist()
        new_sizes = rebalance.group_targets(sizes, self.group_error.tolist(), self.min_codes_per_class,
                                            self.rebalance_rate)
        if new_sizes == sizes:
            return None
        perm, offsets, moved = rebalance.rebalance_permutation(self.cluster_size, self.class_offsets, new_sizes)
        for name in ("codebook", "cluster_size", "embed_sum", "code_last_used", "code_last_event", "last_counts"):
            buf = getattr(self, name)
            buf.copy_(buf[perm])
        self.class_offsets.copy_(offsets)
        self.code_class.copy_(code_classes(offsets))
        self.group_sizes = new_sizes
        return moved

    @torch.no_grad()
    def _reseed(self, xs: torch.Tensor, token_labels: torch.Tensor | None, rms_error: torch.Tensor,
                weights: torch.Tensor | None = None, moved: torch.Tensor | None = None) -> None:
        """Dead codes of group c get a random token of class c from the batch (or μ_c + noise).

        Reset: N_k = threshold_dead and M_k = e_k · N_k, so e_k is the seed (up to Laplace
        smoothing) and the code is "just alive": it stays only if it wins about threshold_dead
        tokens per step from now on, and a seed that wins nothing is replaced again at the next
        step. (A larger reset, e.g. the group's mean count, would let a badly placed code sit
        unused for log(N/threshold) / (1 - decay) steps, ~400 at decay 0.99, before its next
        chance.) Decided on rank 0 and broadcast.
        """
        # idle codes count as dead only where re-seeding is on (threshold_dead > 0)
        dead = dead_codes(self.cluster_size, threshold=self.threshold_dead, idle_steps=self.steps - self.code_last_event,
                          max_idle_steps=self.max_idle_steps if self.threshold_dead > 0 else 0)
        if moved is not None:  # codes that changed group start over in their new group
            dead = dead | moved
        labels = token_labels if self.semantic else None
        if self.semantic and labels is None:  # unlabelled tokens belong to no group: centres only
            labels = torch.full((xs.shape[0],), -1, dtype=torch.int64, device=xs.device)
        # distinct tokens for the dead codes of a group; dead codes beyond the class's tokens take μ_c + noise
        seeds, has_token = sample_class_tokens(xs, labels, self.code_class, self.class_offsets, select=dead,
                                               weights=weights)
        center_known = (self.class_counts > 0)[self.code_class]
        noise = torch.randn_like(self.codebook) * (self.reseed_noise * rms_error)
        fallback = self.class_centers[self.code_class] + noise
        new = torch.where(has_token[:, None], seeds, fallback)
        # a class never seen has no centre: its codes wait for its first token
        dead = dead & (has_token | center_known)
        dead_f, new = broadcast_from_rank0([dead.float(), new])
        dead = dead_f > 0.5

        reset = self.threshold_dead if self.threshold_dead > 0 else 1.0
        if self.reseed_split and self.max_idle_steps > 0:
            # NOTE: a split seed gets the idle window as grace: its count decays to the threshold in
            # max_idle_steps steps without a token, so both dead criteria agree. At K = 8192 a good
            # code wins a token in only ~1 step of 8; reset at the threshold it was torn away after
            # its first empty step (260k re-seeds in 300 steps, benchmarks/RESULTS.md).
            reset = reset * self.decay ** -self.max_idle_steps
        self.codebook.copy_(torch.where(dead[:, None], new, self.codebook))
        self.cluster_size.masked_fill_(dead, reset)
        self.embed_sum.copy_(torch.where(dead[:, None], new * reset, self.embed_sum))
        self.code_last_event.copy_(torch.where(dead, self.steps, self.code_last_event))
        self.codes_reseeded.add_(dead.sum())


class _StraightThrough(torch.autograd.Function):
    """(quantized, commitment) with the straight-through and commitment-loss gradients.

    Forward returns the given values: quantized [M, D] (the codes, in x's dtype) and the
    commitment loss, a scalar computed from the search's sqdist. Backward:
        d quantized / d x = I                          (straight-through estimator)
        d commitment / d x = grad_factor · s ⊙ (s ⊙ x − e)
    with s the per-channel scale sqrt(w_l) (None: 1) and e the code in the scaled space, i.e. the
    gradient of β · mean Σ_l w_l ||x^l − sg(q^l)||². One fused pass instead of the sub / pow /
    sum chain and its backward over [M, D].
    """

    @staticmethod
    def forward(ctx, tokens, quantized, codes, commitment, scale, grad_factor):
        ctx.save_for_backward(tokens, codes, scale)
        ctx.grad_factor = grad_factor
        return quantized.view_as(quantized), commitment.view_as(commitment)

    @staticmethod
    def backward(ctx, grad_quantized, grad_commitment):
        tokens, codes, scale = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None, None
        grad = grad_quantized
        if grad_commitment is not None:
            xs = tokens.float()
            diff = (xs * scale - codes) * scale if scale is not None else xs - codes
            term = diff * (grad_commitment.float() * ctx.grad_factor)
            grad = term if grad is None else grad.float() + term
        if grad is None:
            grad = torch.zeros_like(tokens)
        return grad.to(tokens.dtype), None, None, None, None, None


def _forget_kmeans_flag(module: FastSemanticQuantizer, incompatible_keys) -> None:
    module._kmeans_pending = None if module.kmeans_init else False


def _groups_from_offsets(module: FastSemanticQuantizer, incompatible_keys) -> None:
    # rebalanced checkpoints carry their own group sizes in class_offsets
    offsets = module.class_offsets
    if int(offsets[-1]) == module.codebook_size and bool((offsets[1:] >= offsets[:-1]).all()):
        module.code_class.copy_(code_classes(offsets))
        module.group_sizes = (offsets[1:] - offsets[:-1]).tolist()
    module._host_steps = None


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{_NAME}: {name} must be an int >= {minimum}, got {value!r}")


def _channel_scale(dim: int, level_weights, level_dims):
    """(level_dims, level_weights, scale [D] float32 or None) from the pyramid arguments."""
    if level_weights is None:
        if level_dims is not None:
            raise ValueError(f"{_NAME}: level_dims was given without level_weights")
        return None, None, None
    weights = [float(w) for w in level_weights]
    if not weights or any(not math.isfinite(w) or w <= 0 for w in weights):
        raise ValueError(f"{_NAME}: level_weights must be a non-empty list of positive numbers, got {level_weights!r}")
    L = len(weights)
    if level_dims is None:
        if dim % L:
            raise ValueError(f"{_NAME}: dim {dim} does not split equally into {L} levels: pass level_dims")
        dims = [dim // L] * L
    else:
        dims = list(level_dims)
        if len(dims) != L:
            raise ValueError(f"{_NAME}: level_dims has {len(dims)} entries but level_weights has {L}")
        for l, d in enumerate(dims):
            _check_int(f"level_dims[{l}]", d, 1)
        if sum(dims) != dim:
            raise ValueError(f"{_NAME}: level_dims sum to {sum(dims)} but dim is {dim}")
    scale = torch.cat([torch.full((d,), math.sqrt(w)) for d, w in zip(dims, weights)])
    return dims, weights, scale
