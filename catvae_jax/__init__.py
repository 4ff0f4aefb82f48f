"""catvae_jax: variational autoencoders that generate cat images, in JAX/Flax.

Library entry points: `catvae_jax.train.train_and_evaluate(config, workdir)` trains;
`catvae_jax.load(workdir, step="best")` returns a model with encode, decode, generate,
reconstruct and interpolate; `catvae_jax.metrics.evaluate(model)` computes eval.json.
"""

from catvae_jax.config import get_config
from catvae_jax.errors import UserError
from catvae_jax.inference import VaeModel, load

__all__ = ["UserError", "VaeModel", "get_config", "load"]
__version__ = "0.1.0"
