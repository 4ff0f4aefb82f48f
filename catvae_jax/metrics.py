"""The old name of `catvae_jax.likelihood` (likelihood evaluation, eval.json), kept for users'
code: `catvae_jax.metrics.evaluate` is `catvae_jax.likelihood.evaluate`."""

import sys

from catvae_jax import likelihood

sys.modules[__name__] = likelihood
