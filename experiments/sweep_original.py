"""The original VAE_cats multirun (exp1–exp3) as a grid: their seeds × the learning rate.

exp1 and exp3 use seed 42, exp2 seed 47; all three train vae_cats_v1 at 128² with lr 0.01
(configs/exp1.py … exp3.py), the rate at which the original's runs collapsed. This grid sets
that rate against 0.001 for both seeds, at a budget short enough for 2 CPU cores: 40 steps
(~1.5 epochs of 1706 images, batch 64) per trial, validated on 64 images every 20 steps.

    python -m catvae_jax.sweep --sweep experiments/sweep_original.py --workdir runs/sweep_original
"""


def get_sweep():
    return {
        "config": "configs/exp1.py",
        "overrides": {"data.num_validation": 64, "eval_every_steps": 20},
        "budget": {"max_steps": 40},
        "grid": {"seed": [42, 47], "learning_rate": [0.01, 0.001]},
        "objective": ("val_ssim", "maximize"),
        "pruner": "none",  # a grid to compare: every point runs its whole budget
    }
