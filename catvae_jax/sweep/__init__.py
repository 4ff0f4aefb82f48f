"""Hyperparameter sweeps: an Optuna study whose trials are catvae_jax training runs.

`spec` reads and checks a sweep file (`experiments/sweep_*.py`) and builds each trial's config;
`study` runs one worker of the study shared by every worker (a journal file in the sweep's
workdir, which `journal` checks and opens, or PostgreSQL), each trial in its own training
workdir under the study's folder; `results` writes the tables and plots a person reads. The
command is `python -m catvae_jax.sweep` (`__main__.py`).
"""
