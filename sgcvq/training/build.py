"""Building the pieces of a run from its Config: datasets, model, discriminator, loss, optimizers."""
from __future__ import annotations

import torch

from ..config import Config, DataConfig, OptimConfig, TrainConfig
from ..data import CLASS_NAMES, FolderDataset, SegmentedDataset, SyntheticStreetScenes
from ..model import SGCVQGAN, PatchDiscriminator, VQGANLoss

__all__ = ["build_train_dataset", "build_eval_dataset", "build_video_dataset", "build_models",
           "build_optimizer", "EVAL_SEED_OFFSET", "dataset_class_names", "check_classes", "prepare_for_device",
           "use_channels_last"]

# Held-out synthetic scenes use a different seed, so evaluation never sees a training scene.
EVAL_SEED_OFFSET = 1_000_003


def _folder(data: DataConfig, root: str | None, split: str):
    if not root:
        raise ValueError("data.root must be set when data.dataset=folder (or pass --data-root)")
    # With a segmenter the label maps come from the model, so the folder needs none.
    return FolderDataset(root, layout=data.layout, class_map=data.class_map, resolution=data.resolution,
                         on_error="skip", split=split, labels=data.segmenter is None)


def _segmented(data: DataConfig, dataset):
    """Labels from the user's segmentation model (data.segmenter), replacing any label files."""
    if data.segmenter is None:
        return dataset
    try:
        return SegmentedDataset(dataset, data.segmenter, overwrite=True)
    except (ImportError, AttributeError, TypeError) as err:  # load_segmenter's clear messages
        raise ValueError(f"data.segmenter: {err}") from err


def dataset_class_names(dataset) -> list[str]:
    """The dataset's class names (folder datasets with a named class map), else the synthetic ones."""
    names = getattr(dataset, "class_names", None)
    return list(names) if names else list(CLASS_NAMES)


def check_classes(cfg: Config, dataset) -> None:
    """model.num_classes must match the dataset's classes (a semantic model needs one group per class)."""
    n = getattr(dataset, "num_classes", None) or (len(CLASS_NAMES) if isinstance(dataset, SyntheticStreetScenes)
                                                   else None)
    if cfg.model.num_classes is not None and n is not None and cfg.model.num_classes != n:
        raise ValueError(f"model.num_classes={cfg.model.num_classes} but the dataset has {n} classes; "
                         f"set --set model.num_classes={n} (or null for the plain-VQ baseline)")


def build_train_dataset(data: DataConfig):
    """The training dataset named by data.dataset ("synthetic" or "folder")."""
    if data.dataset == "synthetic":
        return _segmented(data, SyntheticStreetScenes(length=data.length, resolution=data.resolution, seed=data.seed,
                                                       cache=data.cache))
    if data.dataset == "folder":
        return _segmented(data, _folder(data, data.root, data.split))
    raise ValueError(f"data.dataset must be 'synthetic' or 'folder', got {data.dataset!r}")


def build_eval_dataset(data: DataConfig, root: str | None = None):
    """Held-out images: new synthetic scenes, or the folder `root` (default data.root)."""
    if data.dataset == "synthetic" and root is None:
        return _segmented(data, SyntheticStreetScenes(length=data.eval_length, resolution=data.resolution,
                                                       seed=data.seed + EVAL_SEED_OFFSET, cache=data.cache))
    return _segmented(data, _folder(data, root or data.root, data.eval_split if root is None else data.split))


def build_video_dataset(data: DataConfig, length: int):
    """Synthetic clips for temporal stability; None for folder datasets (no video there)."""
    if data.dataset != "synthetic" or data.video_frames < 2:
        return None
    return SyntheticStreetScenes(length=length, resolution=data.resolution,
                                 seed=data.seed + 2 * EVAL_SEED_OFFSET, video=True,
                                 num_frames=data.video_frames)


def build_models(cfg: Config, device: torch.device):
    """(model, discriminator, loss) on `device`."""
    model = SGCVQGAN(cfg.model).to(device)
    disc = PatchDiscriminator(cfg.model).to(device)
    t = cfg.train
    loss = VQGANLoss(disc_start=t.disc_start, disc_weight=t.disc_weight, perceptual_weight=t.perceptual_weight,
                     lpips_weights=t.lpips_weights, l1_weight=t.l1_weight)
    if isinstance(loss, torch.nn.Module):
        loss = loss.to(device)
    return model, disc, loss


def build_optimizer(params, optim: OptimConfig, lr: float, device: torch.device | None = None) -> torch.optim.Optimizer:
    """Adam or AdamW with the configured betas and weight decay.

    On a GPU the fused implementation (one kernel for every parameter's update); elsewhere torch's
    default, so CPU runs keep the numbers they had.
    """
    params = [p for p in params if p.requires_grad]
    extra = {"fused": True} if device is not None and device.type == "cuda" else {}
    if optim.name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=optim.betas, weight_decay=optim.weight_decay, **extra)
    if optim.name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=optim.betas, weight_decay=optim.weight_decay, **extra)
    raise ValueError(f"optim.name must be 'adam' or 'adamw', got {optim.name!r}")


def use_channels_last(train: TrainConfig, device: torch.device) -> bool:
    """train.channels_last resolved: "auto" is on for GPUs (NHWC is the tensor cores' layout)."""
    value = train.channels_last
    if value == "auto":
        return device.type == "cuda"
    if isinstance(value, bool):
        return value
    raise ValueError(f"train.channels_last must be 'auto', true or false, got {value!r}")


def prepare_for_device(train: TrainConfig, model: torch.nn.Module, disc: torch.nn.Module, device: torch.device,
                       sync_batchnorm: bool = False) -> bool:
    """Memory format, SyncBatchNorm and torch.compile for a run; returns whether inputs go channels-last.

    Call before the optimizers are built (SyncBatchNorm replaces the discriminator's norm layers).
    sync_batchnorm: several processes train on GPUs; their discriminator's batch statistics are
    then computed over the global batch. (torch's SyncBatchNorm runs on GPUs only: on CPU processes
    each rank normalises with its own batch and DDP broadcasts rank 0's running statistics.)
    train.compile: the encoder, pyramid, decoder and discriminator are compiled in place (state_dict
    keys unchanged, so checkpoints are interchangeable with eager runs); the quantizer, whose EMA
    update and DDP all-reduce run outside autograd, stays eager.
    """
    channels_last = use_channels_last(train, device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
        disc.to(memory_format=torch.channels_last)
    if sync_batchnorm and device.type == "cuda":
        converted = torch.nn.SyncBatchNorm.convert_sync_batchnorm(disc)
        assert converted is disc  # the root is no BatchNorm: children were replaced in place
    if train.compile:
        import torch._functorch.config as functorch_config

        # NOTE: VQGAN's adaptive GAN weight differentiates the losses through the decoder's last layer
        # with retain_graph=True before the main backward; compiled backwards that donate their saved
        # buffers refuse a retained graph.
        functorch_config.donated_buffer = False
        for part in (model.encoder, model.pyramid, model.decoder, disc):
            part.compile()
    return channels_last
