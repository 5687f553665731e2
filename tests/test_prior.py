"""sgcvq.prior: the mask schedule, restricted sampling, the factorised head, the bad-input messages,
and a 20-step smoke run of train -> sample / edit / predict (library and command line)."""
import math

import pytest
import torch

from sgcvq.prior import (FactorisedHead, FlatHead, MaskedTokenPrior, PriorConfig, PriorTrainConfig, allowed_codes,
                         bits_per_token, check_label_map, class_codes_from_counts, class_codes_from_offsets,
                         code_classes_from_offsets, cosine_gamma, decode, masked_after_steps, predict_frames,
                         sample_context_free, sample_mask, split_bits, train_prior)
from sgcvq.prior.scoring import frechet_distance, miou

pytestmark = pytest.mark.usefixtures("one_thread")


def _random_offsets(K: int, C: int) -> torch.Tensor:
    cuts = torch.randperm(K - 1)[:C - 1].sort().values + 1
    return torch.cat([torch.tensor([0]), cuts, torch.tensor([K])])


# ----------------------------------------------------------------------------------------- schedule
@pytest.mark.parametrize("n,steps", [(64, 8), (7, 8), (1, 3), (193, 12), (0, 4)])
def test_schedule_reveals_every_token_in_order(n, steps):
    left = masked_after_steps(n, steps)
    assert len(left) == steps and left[-1] == 0
    prev = n
    for v in left:
        assert v <= max(prev - 1, 0)  # at least one token revealed per step while any is masked
        prev = v
    assert cosine_gamma(0.0) == 1.0 and abs(cosine_gamma(1.0)) < 1e-12
    # the cosine shape: fewer revealed early than late
    if n >= 64:
        assert n - left[0] < left[-2] - left[-1] + n // steps


def test_training_masks_follow_the_ratio_and_the_maskable_set():
    B, n = 257, 37
    maskable = torch.rand(B, n) < 0.6
    maskable[0] = False
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))
    mask = sample_mask(B, n, gen, "cpu", maskable)
    assert not bool((mask & ~maskable).any())
    counts, allowed = mask.sum(1), maskable.sum(1)
    assert bool((counts[allowed > 0] >= 1).all()) and int(counts[0]) == 0
    assert bool((counts <= allowed).all())
    # the mean ratio of a cosine schedule with r ~ U(0, 1) is 2/pi
    ratio = (counts[allowed > 0].float() / allowed[allowed > 0].float()).mean()
    assert abs(float(ratio) - 2 / math.pi) < 0.08


# ---------------------------------------------------------------------------------------- heads
def test_factorised_head_is_class_then_code_in_group():
    K, C, d = 37, 5, 16
    off = _random_offsets(K, C)
    head = FactorisedHead(d, K, off)
    h = torch.randn(3, 4, d)
    logp = head(h)
    torch.testing.assert_close(logp.exp().sum(-1), torch.ones(3, 4))
    cls_lp = head.class_log_probs(h)
    code_logits = head.code_proj(h)
    for c in range(C):  # naive per-group softmax
        lo, hi = int(off[c]), int(off[c + 1])
        want = cls_lp[..., c:c + 1] + torch.log_softmax(code_logits[..., lo:hi], -1)
        torch.testing.assert_close(logp[..., lo:hi], want)
    # split_bits: the semantic part of the factorised head is exactly -log2 p(class)
    target = torch.randint(0, K, (3, 4))
    sem, tex = split_bits(logp, target, code_classes_from_offsets(off), C)
    cc = code_classes_from_offsets(off)[target]
    torch.testing.assert_close(sem, -cls_lp.gather(-1, cc[..., None])[..., 0] / math.log(2))
    torch.testing.assert_close(sem + tex, -logp.gather(-1, target[..., None])[..., 0] / math.log(2))


def test_flat_head_bits_split_matches_the_group_sums():
    K, C, d = 29, 4, 8
    off = _random_offsets(K, C)
    with torch.no_grad():
        logp = FlatHead(d, K)(torch.randn(50, d))
    target = torch.randint(0, K, (50,))
    sem, tex = split_bits(logp, target, code_classes_from_offsets(off), C)
    p = logp.exp().double()
    for i in range(50):
        c = int(code_classes_from_offsets(off)[target[i]])
        mass = p[i, int(off[c]):int(off[c + 1])].sum()
        assert abs(float(sem[i]) + math.log2(float(mass))) < 1e-4
        assert abs(float(sem[i] + tex[i]) + float(logp[i, target[i]]) / math.log(2)) < 1e-4
    assert bool((tex >= -1e-5).all())  # p(k | class) <= 1


# -------------------------------------------------------------------------------------- sampling
def _tiny_prior(K=23, h=3, w=5, frames=1, head="flat", offsets=None, C=None, layout_prefix=False):
    cfg = PriorConfig(num_codes=K, height=h, width=w, frames=frames, head=head, num_classes=C,
                      layout_prefix=layout_prefix, dim=16, layers=1, heads=2, dropout=0.0)
    return MaskedTokenPrior(cfg, offsets).eval()


@pytest.mark.parametrize("temperature", [1.0, 0.0])
def test_restricted_decoding_only_emits_allowed_codes(temperature):
    K, n, B = 23, 15, 9
    prior = _tiny_prior(K)
    allowed = torch.rand(B, n, K) < 0.2
    allowed[..., 0] |= ~allowed.any(-1)  # every position keeps at least one code
    tokens = torch.full((B, n), prior.mask_id)
    fixed = torch.rand(B, n) < 0.3
    start = torch.randint(0, K, (B, n))
    tokens[fixed] = start[fixed]
    out = decode(prior, tokens, allowed=allowed, steps=5, temperature=temperature,
                 generator=torch.Generator().manual_seed(3))
    assert bool((out < K).all())
    assert torch.equal(out[fixed], start[fixed])  # fixed tokens never change
    free = ~fixed
    assert bool(allowed.gather(-1, out[..., None])[..., 0][free].all())


def test_context_free_sampler_stays_in_the_class_codes():
    C, K = 4, 30
    counts = torch.randint(0, 20, (K, C))
    table = class_codes_from_counts(counts)
    assert bool(table.any(1).all())
    from sgcvq.prior import class_code_frequencies

    freq = class_code_frequencies(counts, table)
    layout = torch.randint(0, C, (6, 40))
    draw = sample_context_free(layout, freq, torch.Generator().manual_seed(0))
    assert bool(table[layout, draw].all())


def test_group_table_and_majority_table():
    K, C = 40, 6
    off = _random_offsets(K, C)
    table = class_codes_from_offsets(off, K)
    assert torch.equal(table.sum(0), torch.ones(K, dtype=torch.long))  # each code in one group
    assert torch.equal(table.float().argmax(0), code_classes_from_offsets(off))
    counts = torch.zeros(K, C, dtype=torch.long)
    counts[torch.arange(K), torch.arange(K) % (C - 1)] = 5  # class C-1 is the majority of no code
    counts[7, C - 1] = 3
    maj = class_codes_from_counts(counts)
    assert bool(maj[C - 1, 7]) and int(maj[C - 1].sum()) == 1
    lay = torch.tensor([[0, -1]])
    allowed = allowed_codes(lay, maj)
    assert torch.equal(allowed[0, 0], maj[0]) and bool(allowed[0, 1].all())


# ----------------------------------------------------------------------------------------- errors
def test_bad_label_maps_are_named():
    with pytest.raises(ValueError, match=r"does not match the tokenizer's images: expected \[32, 32\]"):
        check_label_map(torch.zeros(16, 32, dtype=torch.long), (32, 32), 9)
    bad = torch.randint(0, 9, (32, 32))
    bad[3, 4] = 12
    with pytest.raises(ValueError, match=r"unknown classes \[12\]"):
        check_label_map(bad, (32, 32), 9)
    with pytest.raises(ValueError, match="integer tensor"):
        check_label_map(torch.zeros(32, 32), (32, 32), 9)
    check_label_map(torch.where(bad == 12, 255, bad), (32, 32), 9)  # 255 = ignore is fine


def test_prior_on_another_K_and_missing_groups_are_refused():
    prior = _tiny_prior(K=23)
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 23\).*another codebook"):
        train_prior(prior, torch.randint(0, 40, (8, 15)), PriorTrainConfig(steps=1))
    with pytest.raises(ValueError, match="factorised head needs the codebook's class offsets"):
        _tiny_prior(head="factorised", C=3)
    with pytest.raises(ValueError, match="describe 4 classes"):
        _tiny_prior(K=23, head="factorised", C=3, offsets=_random_offsets(23, 4))


def test_a_masked_position_without_codes_is_an_error():
    prior = _tiny_prior(K=11, h=2, w=2)
    allowed = torch.ones(1, 4, 11, dtype=torch.bool)
    allowed[0, 2] = False
    with pytest.raises(ValueError, match="position 2 of sequence 0 is masked but allows no code"):
        decode(prior, torch.full((1, 4), prior.mask_id), allowed=allowed)


# ------------------------------------------------------------------------------------------ smoke
def test_twenty_step_smoke_image_and_video():
    K, C, h, w = 32, 4, 4, 4
    off = _random_offsets(K, C)
    owner = code_classes_from_offsets(off)
    layout = torch.randint(0, C, (64, h * w))
    # data where the code carries the class: a prior should learn the class structure first
    grids = torch.stack([torch.stack([torch.nonzero(owner == c)[torch.randint(0, int((owner == c).sum()), ())][0]
                                      for c in row]) for row in layout])
    prior = _tiny_prior(K, h, w, head="factorised", offsets=off, C=C)
    losses = train_prior(prior, grids, PriorTrainConfig(steps=20, batch_size=16, warmup=2, lr=3e-3))
    assert len(losses) == 20 and all(math.isfinite(v) for v in losses)
    assert sum(losses[-5:]) < sum(losses[:5])
    table = class_codes_from_offsets(off, K)
    samples = decode(prior, torch.full((5, h * w), prior.mask_id), allowed=allowed_codes(layout[:5], table),
                     steps=8, generator=torch.Generator().manual_seed(1))
    assert torch.equal(owner[samples], layout[:5])  # restricted: every token in its class's group
    bits = bits_per_token(prior, grids[:8], owner, C)
    assert abs(bits["semantic_bits"] + bits["texture_bits"] - bits["bits"]) < 1e-6 and bits["bits"] > 0

    video = _tiny_prior(K, h, w, frames=3)
    seqs = torch.randint(0, K, (32, 3 * h * w))
    train_prior(video, seqs, PriorTrainConfig(steps=20, batch_size=8, warmup=2))
    pred = predict_frames(video, seqs[:3, :2 * h * w].view(3, 2, h * w), horizon=3, steps=4)
    assert pred.shape == (3, 3, h * w) and bool((pred < K).all())
    one = predict_frames(video, seqs[:3, :h * w].view(3, 1, h * w), horizon=1, steps=4)
    assert one.shape == (3, 1, h * w)
    with pytest.raises(ValueError, match="context must be"):
        predict_frames(video, seqs[:3].view(3, 3, h * w), horizon=1)


def test_scores():
    labels = torch.randint(0, 5, (4, 8, 8))
    assert miou(labels, labels, 5) == 1.0
    other = (labels + 1) % 5
    assert miou(other, labels, 5) == 0.0
    a = torch.randn(300, 6, dtype=torch.float64)
    assert abs(frechet_distance(a, a)) < 1e-8
    shift = frechet_distance(a, a + 2.0)
    assert abs(shift - 6 * 4.0) < 1e-6  # a pure shift costs ||mu_a - mu_b||^2


# ------------------------------------------------------------------------------------ command line
@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    """Two tiny tokenizer runs (2 training steps): SGC (K = 32, grouped) and plain VQ (K = 16)."""
    from sgcvq.cli import main
    from sgcvq.config import save_config, smoke_config

    root = tmp_path_factory.mktemp("prior")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    save_config(smoke_config(max_steps=2, ckpt_every=2), root / "sgc.yaml")
    save_config(smoke_config(num_classes=None, max_steps=2, ckpt_every=2), root / "vq.yaml")
    for name, extra in (("sgc", []), ("vq", ["model.codebook_size=16"])):
        assert main(["train", "--config", str(root / f"{name}.yaml"), "--out", str(root / name), "--set",
                     "data.length=16", *extra, "--max-steps", "2"]) == 0
    torch.set_num_threads(n)
    return root


def _write_png(arr, path):
    import numpy as np
    from PIL import Image

    Image.fromarray(np.asarray(arr, dtype=np.uint8)).save(path)


def test_cli_train_sample_edit_predict(tokenizers, capsys):
    from sgcvq.cli import main
    from sgcvq.data import SyntheticStreetScenes

    root = tokenizers
    assert main(["prior", "train", "--tokenizer", str(root / "sgc"), "--out", str(root / "p_img"), "--steps", "20",
                 "--max-images", "16"]) == 0
    import json

    meta = json.loads((root / "p_img" / "prior.json").read_text())
    assert meta["config"]["head"] == "factorised" and meta["config"]["num_codes"] == 32
    ds = SyntheticStreetScenes(2, 32, seed=11)
    (root / "maps").mkdir()
    for i in range(2):
        _write_png(ds[i]["label"].numpy(), root / "maps" / f"m{i}.png")
    assert main(["prior", "sample", "--prior", str(root / "p_img"), "--labels", str(root / "maps"), "--out",
                 str(root / "s")]) == 0
    assert sorted(p.name for p in (root / "s").glob("*.png")) == ["m0.png", "m1.png"]
    # restricted: every sampled token lies in its requested class's group
    import numpy as np

    from sgcvq.prior import load_prior, token_layout
    bundle = load_prior(root / "p_img")
    grid = torch.from_numpy(np.load(root / "s" / "m0.npy"))
    lay = token_layout(ds[0]["label"][None], 4, 9)[0]
    assert bool(bundle.class_codes[lay.flatten(), grid.flatten()].all())
    img = ((ds[0]["image"].permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()
    _write_png(img, root / "scene.png")
    assert main(["prior", "edit", "--prior", str(root / "p_img"), "--image", str(root / "scene.png"), "--box",
                 "20,8,28,20", "--paint", "vehicle", "--out", str(root / "e")]) == 0
    assert (root / "e" / "after.png").is_file()
    assert main(["prior", "train", "--tokenizer", str(root / "sgc"), "--out", str(root / "p_vid"), "--task", "video",
                 "--steps", "20", "--max-images", "8", "--clips", "3"]) == 0
    assert main(["prior", "predict", "--prior", str(root / "p_vid"), "--frames", str(root / "scene.png"),
                 str(root / "scene.png"), "--horizon", "2", "--out", str(root / "v")]) == 0
    assert sorted(p.name for p in (root / "v").glob("*.png")) == ["frame_1.png", "frame_2.png"]


def test_cli_bad_input_is_named(tokenizers, capsys):
    from sgcvq.cli import main

    root = tokenizers
    if not (root / "p_img").is_dir():
        assert main(["prior", "train", "--tokenizer", str(root / "sgc"), "--out", str(root / "p_img"), "--steps",
                     "2", "--max-images", "8"]) == 0
    capsys.readouterr()
    # the factorised head on a tokenizer without class groups
    assert main(["prior", "train", "--tokenizer", str(root / "vq"), "--out", str(root / "bad"), "--head",
                 "factorised", "--steps", "2", "--max-images", "8"]) == 2
    assert "without group layout" in capsys.readouterr().err
    # a prior trained on K = 32 used with a K = 16 tokenizer
    _write_png(torch.zeros(32, 32).numpy(), root / "zeros.png")
    assert main(["prior", "sample", "--prior", str(root / "p_img"), "--tokenizer", str(root / "vq"), "--out",
                 str(root / "x"), "--num", "1"]) == 2
    assert "trained on K = 32 codes but the tokenizer" in capsys.readouterr().err
    # label maps of the wrong size and with unknown classes
    _write_png(torch.zeros(16, 16).numpy(), root / "small.png")
    assert main(["prior", "sample", "--prior", str(root / "p_img"), "--labels", str(root / "small.png"), "--out",
                 str(root / "x")]) == 2
    assert "expected [32, 32]" in capsys.readouterr().err
    _write_png(torch.full((32, 32), 12).numpy(), root / "unknown.png")
    assert main(["prior", "sample", "--prior", str(root / "p_img"), "--labels", str(root / "unknown.png"), "--out",
                 str(root / "x")]) == 2
    assert "unknown classes [12]" in capsys.readouterr().err
    assert main(["prior", "edit", "--prior", str(root / "p_img"), "--image", str(root / "zeros.png"), "--box",
                 "0,0,4,4", "--paint", "spaceship", "--out", str(root / "x")]) == 2
    assert "spaceship" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ table and report
def _fake_results(sgc_miou, base_miou):
    def model(kind, m):
        nf = [{"horizon": h, "miou": 0.5, "psnr": 15.0, "copy_miou": 0.4, "copy_psnr": 14.0} for h in (1, 2)]
        r = {"kind": kind, "ceiling_miou": 0.6, "prior_parameters": 1000, "prior_train_s": 1.0,
             "layout": {"miou": m, "frechet": 2.0, "row_tv": 0.1},
             "context_free": {"miou": m - 0.1, "frechet": 3.0, "row_tv": 0.2},
             "unconditional": {"miou": 0.1, "frechet": 2.5, "row_tv": 0.15},
             "edit": {"iou_inside": 0.5, "psnr_outside": 20.0}, "bits": {"bits": 5.0},
             "next_frame": {"context_2": nf, "context_1": nf}}
        if kind == "ema":
            r["layout_conditioned_prior"] = {"conditioned": {"miou": 0.58, "frechet": 2.1, "row_tv": 0.1},
                                             "prior_parameters": 1200, "prior_train_s": 2.0}
        return r
    return {"models": {"SGC": model("sgc", sgc_miou), "VQ": model("ema", base_miou)}, "judge_miou_real": 0.9,
            "wall_s": 1.0}


def test_floor_checks_and_table(tmp_path):
    from sgcvq.prior.outputs import COND, floor_checks, table_rows
    from sgcvq.report import write_prior_report

    good = floor_checks(_fake_results(0.58, 0.40))
    assert good[0].startswith("met: SGC layout mIoU 0.580 >= 0.9 x its ceiling")
    assert any(line.startswith("met: SGC layout mIoU 0.580 >= best baseline (VQ, 0.400)") for line in good)
    bad = floor_checks(_fake_results(0.45, 0.42))
    assert bad[0].startswith("NOT met") and any("comes within 0.05 mIoU of SGC" in line for line in bad)
    assert any(line.startswith("NOT met: SGC zero-shot layout mIoU 0.450 within 0.03") for line in bad)
    header, rows = table_rows(_fake_results(0.58, 0.40))
    assert header == ["SGC", "VQ", COND]
    first = dict(rows)["judge mIoU, layout-controlled samples"]
    assert first == ["0.580", "0.400", "0.580"]
    page = write_prior_report(tmp_path, header, rows, [("Edits", "caption", "edits.png")], ["a note"])
    text = page.read_text()
    assert "edits.png" in text and "0.580" in text and COND in text
