"""The patch discriminator of the adversarial loss term (`config.loss.adversarial_weight`).

PatchGAN-style (Isola et al. 2017; VQGAN's, without BatchNorm so that it carries no batch
statistics): three 4×4 stride-2 convolutions of `width`, 2·`width`, 4·`width` channels, the last
two GroupNorm-ed, LeakyReLU(0.2) after each, then a 3×3 convolution to one logit per patch. An
S×S image gets (S/8)×(S/8) logits, each judging a 38×38-pixel window: real or decoded.
"""

from __future__ import annotations

import itertools

import jax
import ml_collections
from flax import nnx


class PatchDiscriminator(nnx.Module):
    """Images [B, S, S, 3] in [0, 1] → logits [B, S/8, S/8] (S a multiple of 8; others round up)."""

    def __init__(self, width: int = 32, *, rngs: nnx.Rngs):
        chans = (3, width, 2 * width, 4 * width)
        conv = lambda i, o: nnx.Conv(i, o, (4, 4), strides=(2, 2), rngs=rngs)
        self.convs = nnx.List([conv(i, o) for i, o in itertools.pairwise(chans)])
        self.norms = nnx.List(
            [nnx.GroupNorm(c, num_groups=min(8, c), rngs=rngs) for c in chans[2:]]
        )
        self.out = nnx.Conv(chans[-1], 1, (3, 3), rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = 2.0 * x - 1.0
        for i, conv in enumerate(self.convs):
            h = conv(h)
            if i:
                h = self.norms[i - 1](h)
            h = jax.nn.leaky_relu(h, 0.2)
        return self.out(h)[..., 0]


def make(config: ml_collections.ConfigDict) -> PatchDiscriminator:
    """The configured discriminator, its initialisers in one compiled program (its key is
    `config.seed`'s folded with 1, so that it differs from the VAE's)."""
    width = int(config.discriminator.width)
    key = lambda: jax.random.fold_in(jax.random.key(config.seed), 1)
    build = lambda: PatchDiscriminator(width, rngs=nnx.Rngs(params=key()))
    graphdef, _ = nnx.split(nnx.eval_shape(build))
    return nnx.merge(graphdef, jax.jit(lambda: nnx.state(build()))())


def graphdef(config: ml_collections.ConfigDict) -> nnx.GraphDef:
    """The configured discriminator's graphdef, allocating nothing (for the train step)."""
    width = int(config.discriminator.width)
    return nnx.split(nnx.eval_shape(lambda: PatchDiscriminator(width, rngs=nnx.Rngs(0))))[0]
