"""Issue 24: held-out code use per class group of a trained SGC checkpoint.

    python benchmarks/issue24_per_group_usage.py <checkpoint folder> <held-out scenes>
"""
import sys, torch
torch.set_num_threads(1)
from sgcvq.tokenizer_io import load_tokenizer
from sgcvq.training.evaluate import evaluate
from sgcvq.data import CLASS_NAMES
model, cfg, _ = load_tokenizer(sys.argv[1])
cfg.data.num_workers = 0
ev = evaluate(model, cfg, torch.device("cpu"), max_images=int(sys.argv[2]), video_clips=4)
off = model.quantizer.class_offsets.tolist(); cnt = ev.counts
for c, name in enumerate(CLASS_NAMES):
    g = cnt[off[c]:off[c+1]]
    print(f"{name}: {off[c+1]-off[c]} codes, {int(g.sum())} tokens, used {(g>0).float().mean():.1%}")
print("all", (cnt>0).float().mean())
