"""Train the demo head shipped for the `tiny-scenes` backbone (`src/diff2in1/presets/tiny-scenes-head`).

With it, `Diff2in1Pipeline.from_pretrained("tiny-scenes")` and `diff2in1 predict photo.jpg --out p`
work with no files of the user's. It is a `small` head trained by the ordinary warm-up stage
(`train_warmup`) on procedural scenes; useful on such scenes only, not on real photos.

Reproduce the shipped head (the settings below are the defaults and are written to
`training.json` beside the weights, with the held-out metrics):
    .venv/bin/python scripts/train_demo_head.py --out src/diff2in1/presets/tiny-scenes-head

Bit-exact reproduction needs the same thread count and CPU kernels.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

SETTINGS = dict(
    backbone="tiny-scenes",
    size=128,  # scenes and head resolution (square, squash)
    train=160,
    test=40,
    scene_seed=0,
    seed=0,  # head initialisation, noise and batch order
    head="small",
    batch_size=8,
    lr=1e-3,
    steps=400,  # 20 epochs of 160 scenes
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="head folder to write (replaced if it exists)")
    ap.add_argument("--steps", type=int, default=SETTINGS["steps"], help="optimizer steps")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's choice)")
    a = ap.parse_args()

    import torch

    from diff2in1.backbone import load_backbone
    from diff2in1.config import WarmupConfig
    from diff2in1.data.scenes import make_scenes
    from diff2in1.inference.predictor import NormalPredictor
    from diff2in1.stages.evaluate import evaluate
    from diff2in1.stages.warmup import train_warmup

    if a.threads:
        torch.set_num_threads(a.threads)
    s = dict(SETTINGS, steps=a.steps)
    backbone = load_backbone(s["backbone"])
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="diff2in1-demo-head-") as tmp:
        data = Path(tmp) / "data"
        make_scenes(data, s["train"], s["test"], size=s["size"], seed=s["scene_seed"], progress=False)
        cfg = WarmupConfig(
            data=str(data),
            backbone=s["backbone"],
            out=str(Path(tmp) / "run"),
            head=s["head"],
            resolution=(s["size"], s["size"]),
            batch_size=s["batch_size"],
            lr=s["lr"],
            seed=s["seed"],
            epochs=10**6,
            max_steps=s["steps"],
            checkpoint_every=0,
            num_workers=0,
            device="cpu",
        )
        result = train_warmup(cfg, False, backbone)
        head_dir = Path(result.outputs["head"])
        train_s = time.perf_counter() - t0
        from diff2in1.heads import NormalHead

        predictor = NormalPredictor(backbone, NormalHead.from_pretrained(head_dir), resolution=s["size"])
        ev = evaluate(predictor, data, "test", out=Path(tmp) / "eval", batch_size=8, progress=False)
        out = Path(a.out)
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        for f in ("config.json", "diffusion_pytorch_model.safetensors"):
            shutil.copy2(head_dir / f, out / f)
    metrics = {k: round(float(v), 3) for k, v in ev.metrics.items() if k != "pixels"}
    record = {
        "what": "demo head for the tiny-scenes backbone: procedural scenes only, not real photos",
        "script": "scripts/train_demo_head.py",
        "settings": s,
        "train_seconds": round(train_s, 1),
        "torch_threads": torch.get_num_threads(),
        "held_out": {"scenes": s["test"], **metrics},
    }
    (out / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
