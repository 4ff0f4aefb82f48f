"""catvae_jax: variational autoencoders that generate cat images, in JAX/Flax.

Library entry points: `catvae_jax.train.loop.train_and_evaluate(config, workdir)` trains;
`catvae_jax.load(workdir, step="best")` returns a model with encode, decode, generate,
reconstruct and interpolate (`workdir` may be a model file, `cats.catvae`, or a shipped model,
`"pretrained:quickstart"`); `catvae_jax.evaluation.likelihood.evaluate(model)` computes eval.json
(`catvae_jax.metrics` is its old name).
"""

from typing import Any

from catvae_jax.config import get_config
from catvae_jax.errors import UserError

__all__ = ["UserError", "VaeModel", "get_config", "load", "train_and_evaluate"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """`load`, `VaeModel` and `train_and_evaluate` are imported on first use: they bring in the
    model, checkpoint and Orbax stack, which `python -m catvae_jax.data prepare` (a
    subpackage) never needs."""
    if name in ("load", "VaeModel"):
        from catvae_jax import inference

        return getattr(inference, name)
    if name == "train_and_evaluate":
        from catvae_jax import after_training

        return after_training.train_and_evaluate
    raise AttributeError(f"module 'catvae_jax' has no attribute '{name}'")
