"""A search on synthetic cats at 64²: β, learning rate, z_dim and widths of the default resvae.

Base: configs/default.py (resvae, cosine lr, 4096 synthetic cats) without its LPIPS term, at
batch 16: the term triples a step's cost on CPU, and 20 trials have to fit in about an hour on
2 cores. Each trial trains 400 steps (~1.6 epochs), validating every 100; the objective is the
validation SSIM, which stays comparable across β (the validation loss does not: β weights its
KL term). TPE proposes the points (seed 0, 5 random startup trials); the median pruner stops a
trial whose SSIM is below the median of earlier trials at the same step, after 100 steps.

    python -m catvae_jax.sweep --sweep experiments/sweep_synthetic.py \
        --workdir runs/sweep_synthetic --trials 20
"""


def get_sweep():
    return {
        "config": "configs/default.py",
        "overrides": {
            "eval_every_steps": 100,
            "data.num_validation": 128,
            "loss.lpips_weight": 0.0,
            "batch_size": 16,
        },
        "budget": {"max_steps": 400},
        "space": {
            "loss.beta": ("log", 0.05, 2.0),
            "learning_rate": ("log", 3e-4, 1e-2),
            "model.z_dim": ("choice", [32, 64, 128, 256]),
            "model.widths": ("choice", [(8, 16, 32, 64), (16, 32, 64, 128), (16, 32, 64, 64)]),
        },
        "objective": ("val_ssim", "maximize"),
        "sampler": "tpe",
        "seed": 0,
        "pruner": ("median", {"n_startup_trials": 5, "n_warmup_steps": 100}),
        "trials": 20,
    }
