"""Fine-tuning against training from scratch, at the same small budget, on a folder of real photos.

    python benchmarks/finetune_photos.py --out DIR [--epochs 8] [--init_from pretrained:quickstart]

Makes DIR/photos: square crops (96 px to the photo's short side, seeded) of five of
scikit-image's sample photos (astronaut, chelsea, coffee, rocket, hubble_deep_field; needs
`pip install scikit-image`), then trains configs/quickstart.py on that folder twice for the
same number of steps, from --init_from (`--config.init_from`) and from scratch, and prints
each run's validation loss, SSIM and the bits/dim range of its validation photos. A folder of
crops of five photos shows that fine-tuning works, not how good a model of photos it makes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field")
CROPS_PER_PHOTO = 40


def make_crops(folder: str, seed: int = 0) -> int:
    """Writes CROPS_PER_PHOTO random square crops of each photo as PNGs; returns how many."""
    import skimage.data

    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    count = 0
    for name in PHOTOS:
        photo = getattr(skimage.data, name)()
        h, w = photo.shape[:2]
        for i in range(CROPS_PER_PHOTO):
            side = int(rng.integers(96, min(h, w) + 1))
            y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
            crop = photo[y : y + side, x : x + side]
            Image.fromarray(crop).save(os.path.join(folder, f"{name}_{i:02d}.png"))
            count += 1
    return count


def train(workdir: str, photos: str, data_dir: str, epochs: int, init_from: str) -> dict:
    """Trains configs/quickstart.py on the photos; returns the last validation record."""
    cmd = [
        sys.executable, "-m", "catvae_jax.main", "--config", "configs/quickstart.py",
        "--workdir", workdir, "--config.data.source=folder", f"--config.data.path={photos}",
        f"--config.data.data_dir={data_dir}", f"--config.num_epochs={epochs}",
        "--config.wandb.mode=disabled", "--config.progress_bar=False",
    ]  # fmt: skip
    if init_from:
        cmd.append(f"--config.init_from={init_from}")
    subprocess.run(cmd, check=True)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f if "val_loss" in line]
    last = records[-1]
    step = last["step"]
    with open(os.path.join(workdir, f"bpd_{step}.json")) as f:
        q = json.load(f)["quantiles"]
    return {**last, "bpd_median": q[50], "bpd_range": (q[0], q[100])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--init_from", default="pretrained:quickstart")
    args = parser.parse_args()
    photos = os.path.join(args.out, "photos")
    print(f"{make_crops(photos)} crops in {photos}", flush=True)
    data_dir = os.path.join(args.out, "tfds")
    results = {
        "fine-tuned": train(
            os.path.join(args.out, "finetuned"), photos, data_dir, args.epochs, args.init_from
        ),
        "scratch": train(os.path.join(args.out, "scratch"), photos, data_dir, args.epochs, ""),
    }
    for name, r in results.items():
        low, high = r["bpd_range"]
        print(
            f"{name}: step {r['step']}, val_loss {r['val_loss']:.1f}, val_ssim "
            f"{r['val_ssim']:.3f}, validation bits/dim {r['bpd_median']:.3f} "
            f"(range {low:.3f}-{high:.3f})",
            flush=True,
        )


if __name__ == "__main__":
    main()
