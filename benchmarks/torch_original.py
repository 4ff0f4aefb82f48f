"""The original VAE_cats model in PyTorch, and its train-step benchmark.

`Model` rebuilds the original Lightning module's network layer for layer (as described by the
original project; summarised in `catvae_jax.model.networks.VaeCatsV1`), with the same state_dict
keys (`encode.{0,2,4,6}`, `FC_mean`, `FC_var`, `fc`, `decode.{1,3,5,7,9}`), so a checkpoint of it is
a checkpoint of the original. Images are NCHW float32 in [0, 1]. The parity test
(tests/e2e/test_import_torch.py) and the comparison (benchmarks/compare.py) use this one copy.

Benchmark, same flags and JSON line as `python -m catvae_jax.bench`:

    python benchmarks/torch_original.py --config configs/exp1.py --loss ssim --steps 5

One train step is eager PyTorch without Lightning: forward, loss, backward, AdamW step. The loss
is the same function as catvae_jax.model.losses: the batch mean of a per-image reconstruction term
(`mse`: squared error summed over pixels; `ssim`: (1 − SSIM)·C·H·W with kornia's SSIM, 11-tap
Gaussian σ = 1.5, VALID windows) plus the KL summed over latent dimensions. PyTorch's thread
count is left at its default (all cores); glibc malloc too, unless --malloc reuse (the setting
the catvae_jax CLIs use, catvae_jax/train/malloc.py).
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import torch
from torch import nn


class UnFlatten(nn.Module):
    """[B, h_dim] → [B, h_dim, 1, 1]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], x.shape[1], 1, 1)


class Model(nn.Module):
    """The original `Model`: NCHW [B, 3, 128, 128] → (x_hat, mu, logvar)."""

    def __init__(self, h_dim: int = 1024, z_dim: int = 32, channels: int = 3):
        super().__init__()
        self.encode = nn.Sequential(
            nn.Conv2d(channels, 32, kernel_size=4, stride=2),
            nn.ReLU(),
            nn.Conv2d(32, 64, kernel_size=4, stride=2),
            nn.ReLU(),
            nn.Conv2d(64, 128, kernel_size=4, stride=2),
            nn.ReLU(),
            nn.Conv2d(128, 256, kernel_size=4, stride=8),
            nn.ReLU(),
            nn.Flatten(),
        )
        self.FC_mean = nn.Linear(h_dim, z_dim)
        self.FC_var = nn.Linear(h_dim, z_dim)
        self.fc = nn.Linear(z_dim, h_dim)
        self.decode = nn.Sequential(
            UnFlatten(),
            nn.ConvTranspose2d(h_dim, 128, kernel_size=5, stride=2),
            nn.ReLU(),
            nn.ConvTranspose2d(128, 64, kernel_size=5, stride=2),
            nn.ReLU(),
            nn.ConvTranspose2d(64, 32, kernel_size=6, stride=2),
            nn.ReLU(),
            nn.ConvTranspose2d(32, 16, kernel_size=6, stride=2),
            nn.ReLU(),
            nn.ConvTranspose2d(16, channels, kernel_size=2, stride=2),
            nn.Sigmoid(),
        )

    def encoder(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, 3, 128, 128] → (mu, logvar), each [B, z_dim]."""
        h = self.encode(x)
        return self.FC_mean(h), self.FC_var(h)

    def decoder(self, z: torch.Tensor) -> torch.Tensor:
        """[B, z_dim] → [B, 3, 128, 128] in [0, 1]."""
        return self.decode(self.fc(z))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encoder(x)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        return self.decoder(z), mu, logvar


def lightning_checkpoint(model: Model, epoch: int = 0, global_step: int = 0) -> dict:
    """A dict shaped like a PyTorch Lightning .ckpt of `model` (what torch.save writes)."""
    return {
        "epoch": epoch,
        "global_step": global_step,
        "pytorch-lightning_version": "2.1.0",
        "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "optimizer_states": [],
        "lr_schedulers": [],
        "loops": {},
        "callbacks": {},
    }


def vae_loss(
    x: torch.Tensor, x_hat: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, loss: str
) -> torch.Tensor:
    """Batch mean of reconstruction + KL, as catvae_jax.model.losses with weight 1 on `loss`."""
    if loss == "mse":
        recon = ((x - x_hat) ** 2).flatten(1).sum(1)
    else:
        import kornia

        s = kornia.metrics.ssim(x, x_hat, 11, max_val=1.0, padding="valid").flatten(1).mean(1)
        recon = (1.0 - s) * x[0].numel()
    kl = -0.5 * torch.sum(1.0 + logvar - mu**2 - torch.exp(logvar), dim=1)
    return torch.mean(recon + kl)


def bench(
    loss: str, batch: int, steps: int, repeats: int, lr: float, weight_decay: float,
    h_dim: int = 1024, z_dim: int = 32, image_size: int = 128, seed: int = 0,
) -> dict:  # fmt: skip
    """Median train-step time over `repeats` timed runs of `steps` steps, after 2 warm-up steps."""
    torch.manual_seed(seed)
    model = Model(h_dim, z_dim)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    x = torch.rand(batch, 3, image_size, image_size)

    def step() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        x_hat, mu, logvar = model(x)
        value = vae_loss(x, x_hat, mu, logvar, loss)
        value.backward()
        opt.step()
        return value

    t0 = time.perf_counter()
    for _ in range(2):
        step()
    warmup_s = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps):
            value = step()
        float(value.detach())
        times.append((time.perf_counter() - t0) / steps)
    ms = 1000 * statistics.median(times)
    return {
        "img_per_s": round(batch / (ms / 1000), 2),
        "ms_per_step": round(ms, 2),
        "model": "vae_cats_v1",
        "batch": batch,
        "image_size": image_size,
        "loss": loss,
        "devices": 1,
        "backend": "cpu",
        "framework": f"torch {torch.__version__}",
        "threads": torch.get_num_threads(),
        "steps": steps,
        "repeats": repeats,
        "repeat_ms": [round(1000 * t, 2) for t in times],
        "warmup_s": round(warmup_s, 2),
    }


def main(argv: list[str]) -> None:
    from absl import flags

    from catvae_jax import cli
    from catvae_jax.train import malloc

    config = flags.FLAGS.config
    with cli.user_errors():
        reuse = malloc.configure(flags.FLAGS.malloc)
    if config.model.name != "vae_cats_v1" or config.image_size != 128:
        cli.fail("torch_original runs the original model only: use a vae_cats_v1 config at 128px")
    result = bench(
        loss=flags.FLAGS.loss,
        batch=flags.FLAGS.batch or config.batch_size,
        steps=flags.FLAGS.steps,
        repeats=flags.FLAGS.repeats,
        lr=config.learning_rate,
        weight_decay=config.weight_decay,
        h_dim=config.model.h_dim,
        z_dim=config.model.z_dim,
        seed=config.seed,
    )
    result["malloc"] = "reuse" if reuse else "system"
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    from absl import flags

    from catvae_jax import cli

    cli.define_config_file("exp1.py", "Config file.", lock_config=True)
    flags.DEFINE_enum("loss", "ssim", ["ssim", "mse"], "Reconstruction loss.")
    flags.DEFINE_integer("steps", 10, "Train steps per timed repeat.", lower_bound=1)
    flags.DEFINE_integer("batch", 0, "Batch size; 0 = the config's batch_size.", lower_bound=0)
    flags.DEFINE_integer("repeats", 3, "Timed repeats; the median is reported.", lower_bound=1)
    flags.DEFINE_enum("malloc", "system", ["system", "reuse"], "glibc malloc settings.")
    sys.exit(cli.run_app(main))
