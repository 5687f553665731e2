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
