"""defer_checks: the quantizer's input checks without a host read per call (the trainer's GPU mode).

The same bad inputs as the immediate checks must still end in the same kind of clear ValueError,
at the next `raise_deferred_checks()`, and nothing in between may index out of range.
"""
import pytest
import torch

from sgcvq import FastSemanticQuantizer


def _quantizer(**kw):
    torch.manual_seed(0)
    q = FastSemanticQuantizer(8, 24, num_classes=3, kmeans_init=False, **kw)
    q.defer_checks = True
    return q


def test_deferred_nonfinite_raises_at_the_next_read_and_indices_stay_in_range():
    q = _quantizer()
    x = torch.randn(2, 10, 8)
    x[0, 3, 1] = float("nan")
    x[1, 4] = float("inf")
    quantized, indices, _ = q(x)  # no raise here: the check is on the device
    assert bool(((indices >= 0) & (indices < 24)).all())
    with pytest.raises(ValueError, match="NaN or Inf"):
        q.raise_deferred_checks()
    q.raise_deferred_checks()  # read once: nothing pending afterwards


def test_deferred_labels_out_of_range_raise_and_search_all_codes_meanwhile():
    q = _quantizer(check_labels=True)
    x = torch.randn(2, 10, 8)
    labels = torch.randint(0, 3, (2, 10))
    labels[1, 2] = 7  # out of range: searched against all codes until the check is read
    _, indices, _ = q(x, labels=labels)
    assert bool(((indices >= 0) & (indices < 24)).all())
    with pytest.raises(ValueError, match="labels outside"):
        q.raise_deferred_checks()


def test_deferred_checks_accumulate_over_calls_and_clean_calls_raise_nothing():
    q = _quantizer()
    q(torch.randn(4, 8))
    q.raise_deferred_checks()
    bad = torch.randn(4, 8)
    bad[2, 0] = float("nan")
    q(bad)
    q(torch.randn(4, 8))  # a clean call after the bad one does not clear it
    with pytest.raises(ValueError):
        q.raise_deferred_checks()


def test_immediate_checks_unchanged_without_defer():
    q = _quantizer()
    q.defer_checks = False
    x = torch.randn(4, 8)
    x[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        q(x)


def test_trainer_defers_only_on_a_gpu(tmp_path):
    from sgcvq.training import Trainer
    from sgcvq.training.demo import demo_config

    cfg = demo_config(9, 2)
    cfg.train.device = "cpu"
    cfg.log.progress = cfg.log.csv = cfg.log.tensorboard = False
    trainer = Trainer(cfg, tmp_path / "run")
    assert trainer._deferred, "the model's quantizer offers deferred checks"
    assert not any(m.defer_checks for m in trainer._deferred)  # the CPU fails at the very call


def test_group_loss_schedule_on_the_device_matches_the_python_schedule():
    from sgcvq.model.semantic_loss import group_loss_weight_at, group_loss_weight_on_device

    for args in [(0.05, 10, 100, 50, 0.01), (0.05, 0, 100, 0, 0.0), (0.05, 20, 0, 0, 0.0), (0.1, 7, 30, 13, 0.02)]:
        for step in range(0, 160):
            assert group_loss_weight_on_device(torch.tensor(step), *args).item() == group_loss_weight_at(step, *args)


@pytest.mark.parametrize("warmup", [0, 5])
def test_model_training_forward_reads_nothing_from_the_device(monkeypatch, warmup):
    """With defer_checks (the trainer's GPU mode) a training forward of the SGC model never reads a
    device value on the host: no item/tolist/bool of a tensor (each a sync on a GPU)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from sgcvq.model import SGCVQGAN
    from sgcvq.training.demo import demo_config

    cfg = demo_config(9, 2).model
    cfg.group_loss_warmup = warmup
    torch.manual_seed(0)
    model = SGCVQGAN(cfg).train()
    images = torch.rand(2, 3, cfg.resolution, cfg.resolution) * 2 - 1
    labels = torch.randint(0, 9, (2, cfg.resolution, cfg.resolution))
    model(images, labels)  # the first call runs the k-means start (host reads allowed there)
    for m in model.modules():
        if hasattr(m, "raise_deferred_checks"):
            m.defer_checks = True
    reads = []

    class Reads(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten._local_scalar_dense.default:
                reads.append(func)
            return func(*args, **(kwargs or {}))

    def no_tolist(self):
        raise AssertionError("tolist() in a training step")

    monkeypatch.setattr(torch.Tensor, "tolist", no_tolist)
    with Reads():
        out = model(images, labels)
    assert not reads, f"{len(reads)} host read(s) in a training forward"
    monkeypatch.undo()
    bad = labels.clone()
    bad[0, 0, 0] = 77
    model(images, bad)  # deferred: no raise here
    with pytest.raises(ValueError, match="labels held values"):
        model.raise_deferred_checks()
    assert torch.isfinite(out.recon).all()
