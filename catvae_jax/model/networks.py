"""VAE models in flax.nnx, chosen by `config.model.name`.

Every model exposes `encode(x) -> (mu, logvar)` and `decode(z) -> x_hat`, with images NHWC
float32 in [0, 1] and latents [batch, config.latent_size(config)] (z_dim, plus hvae's local
group). `init_compiled(config, seed)` makes the configured one with its initialisers in one
compiled program (fast); `init_eager` runs them op by op (for `nnx.eval_shape`, which traces it
without running anything).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from catvae_jax.config import MODEL_NAMES
from catvae_jax.model import backend, layers
from catvae_jax.model.layers import ConvTranspose


class VaeCatsV1(nnx.Module):
    """The original VAE_cats `Model`, layer for layer (128×128×3 inputs only).

    Encoder: four VALID convolutions (k4 s2, k4 s2, k4 s2, k4 s8) with ReLU to 256×2×2, flattened
    in PyTorch's channel-major order to h_dim = 1024, then `FC_mean` / `FC_var` heads. Decoder: `fc`
    (z_dim → h_dim), then five VALID transposed convolutions 1→5→13→30→64→128 and a sigmoid.
    Parameter names follow the PyTorch state_dict so checkpoints map one to one.

    `kernels` ("cpu" or "plain", `backend.kernels`) picks im2col encoder convolutions and
    sub-pixel transposed convolutions, or XLA's own; `dtype` (`backend.compute_dtype`) the
    activations' dtype. Inputs, latents and outputs are float32 either way.
    """

    def __init__(
        self,
        z_dim: int = 32,
        h_dim: int = 1024,
        *,
        rngs: nnx.Rngs,
        kernels: str = "cpu",
        dtype: jnp.dtype | None = None,
    ):
        conv = lambda i, o, s: nnx.Conv(
            i, o, (4, 4), strides=(s, s), padding="VALID", dtype=dtype, rngs=rngs
        )
        self.encode_layers = nnx.List(
            [conv(3, 32, 2), conv(32, 64, 2), conv(64, 128, 2), conv(128, 256, 8)]
        )
        self.FC_mean = nnx.Linear(h_dim, z_dim, dtype=dtype, rngs=rngs)
        self.FC_var = nnx.Linear(h_dim, z_dim, dtype=dtype, rngs=rngs)
        self.fc = nnx.Linear(z_dim, h_dim, dtype=dtype, rngs=rngs)
        spec = [(h_dim, 128, 5), (128, 64, 5), (64, 32, 6), (32, 16, 6), (16, 3, 2)]
        fast = kernels == "cpu"
        self.decode_layers = nnx.List(
            [ConvTranspose(i, o, k, 2, rngs=rngs, use_fast=fast) for i, o, k in spec]
        )
        self.h_dim, self.kernels, self.dtype = h_dim, kernels, dtype

    def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """x: [B, 128, 128, 3] in [0, 1] → (mu, logvar), each [B, z_dim] float32."""
        h = backend.cast(x, self.dtype)
        for layer in self.encode_layers:
            if self.kernels == "cpu":  # same function as layer(h), faster on XLA:CPU
                h = layers.conv(h, layer.kernel[...], layer.strides) + layer.bias[...].astype(
                    h.dtype
                )
            else:
                h = layer(h)
            h = jax.nn.relu(h)
        h = h.transpose(0, 3, 1, 2).reshape(h.shape[0], -1)  # PyTorch's NCHW flatten order
        return _f32(self.FC_mean(h)), _f32(self.FC_var(h))

    def decode(self, z: jax.Array) -> jax.Array:
        """z: [B, z_dim] → images [B, 128, 128, 3] in [0, 1], float32."""
        h = self.fc(backend.cast(z, self.dtype)).reshape(z.shape[0], 1, 1, self.h_dim)
        for i, layer in enumerate(self.decode_layers):
            h = layer(h)
            h = jax.nn.sigmoid(_f32(h)) if i == len(self.decode_layers) - 1 else jax.nn.relu(h)
        return h


def _f32(x: jax.Array) -> jax.Array:
    return x.astype(jnp.float32)


def gaussian_draw(mu: jax.Array, logvar: jax.Array, key: jax.Array) -> jax.Array:
    """One reparameterised draw z = mu + exp(logvar / 2)·N(0, I), shaped like mu."""
    return mu + jnp.exp(0.5 * logvar) * jax.random.normal(key, mu.shape, mu.dtype)


class ResBlock(nnx.Module):
    """GroupNorm → SiLU → 3×3 conv, twice, plus the identity. Shape-preserving (NHWC)."""

    def __init__(self, ch: int, *, rngs: nnx.Rngs, dtype: jnp.dtype | None = None):
        groups = min(8, ch)
        self.norm1 = nnx.GroupNorm(ch, num_groups=groups, dtype=dtype, rngs=rngs)
        self.conv1 = nnx.Conv(ch, ch, (3, 3), dtype=dtype, rngs=rngs)
        self.norm2 = nnx.GroupNorm(ch, num_groups=groups, dtype=dtype, rngs=rngs)
        zeros = nnx.initializers.zeros
        self.conv2 = nnx.Conv(ch, ch, (3, 3), dtype=dtype, rngs=rngs, kernel_init=zeros)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.conv1(jax.nn.silu(self.norm1(x)))
        return x + self.conv2(jax.nn.silu(self.norm2(h)))


class ResVae(nnx.Module):
    """The recommended VAE: residual blocks with GroupNorm and SiLU, one stride-2 3×3 convolution
    per entry of `widths` (four by default: down to 1/16 of the image size), and as many
    nearest-resize + 3×3 convolutions back up (no transposed convolutions, so no checkerboard
    artefacts). Any image size that is a multiple of 2^len(widths).

    `kernels` "cpu" runs each upsampling convolution on the small grid (sub-pixel phases),
    "plain" as a convolution of the upsampled image; `dtype` is the activations' dtype.
    """

    def __init__(
        self,
        image_size: int,
        z_dim: int = 128,
        widths: tuple[int, ...] = (8, 16, 32, 64),
        blocks_per_stage: int = 1,
        *,
        rngs: nnx.Rngs,
        kernels: str = "cpu",
        dtype: jnp.dtype | None = None,
    ):
        widths = tuple(widths)
        self.bottom = image_size // 2 ** len(widths)
        self.widths, self.kernels, self.dtype = widths, kernels, dtype
        blocks = lambda ch: nnx.List(
            [ResBlock(ch, rngs=rngs, dtype=dtype) for _ in range(blocks_per_stage)]
        )
        norm = lambda ch: nnx.GroupNorm(ch, num_groups=min(8, ch), dtype=dtype, rngs=rngs)
        down, enc_blocks, ch = [], [], 3
        for w in widths:
            down.append(nnx.Conv(ch, w, (3, 3), strides=(2, 2), dtype=dtype, rngs=rngs))
            enc_blocks.append(blocks(w))
            ch = w
        self.down, self.enc_blocks = nnx.List(down), nnx.List(enc_blocks)
        flat = self.bottom * self.bottom * widths[-1]
        self.enc_norm = norm(widths[-1])
        self.to_stats = nnx.Linear(flat, 2 * z_dim, dtype=dtype, rngs=rngs)
        self.from_z = nnx.Linear(z_dim, flat, dtype=dtype, rngs=rngs)
        up, dec_blocks = [], []
        outs = (*widths[-2::-1], 3)  # channels after each upsampling
        for w_in, w_out in zip(widths[::-1], outs, strict=True):
            dec_blocks.append(blocks(w_in))
            up.append(nnx.Conv(w_in, w_out, (3, 3), dtype=dtype, rngs=rngs))
        self.dec_blocks, self.up = nnx.List(dec_blocks), nnx.List(up)
        self.out_norm = norm(widths[0])

    def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """x: [B, S, S, 3] in [0, 1] → (mu, logvar), each [B, z_dim] float32."""
        return self._stats(self._bottom_up(x)[-1])

    def _bottom_up(self, x: jax.Array) -> list[jax.Array]:
        """x: [B, S, S, 3] in [0, 1] → the encoder's features after each stage, S/2 … bottom."""
        h, out = backend.cast(2.0 * x - 1.0, self.dtype), []
        for conv, stage in zip(self.down, self.enc_blocks, strict=True):
            h = conv(h)
            for block in stage:
                h = block(h)
            out.append(h)
        return out

    def _stats(self, h: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The bottom grid's features → the global latent's (mu, logvar), each [B, z_dim]."""
        h = jax.nn.silu(self.enc_norm(h)).reshape(h.shape[0], -1)
        mu, logvar = jnp.split(_f32(self.to_stats(h)), 2, axis=-1)
        return mu, logvar

    def decode(self, z: jax.Array) -> jax.Array:
        """z: [B, z_dim] → images [B, S, S, 3] in [0, 1], float32."""
        h = self._from_z(z)
        for i in range(len(self.up)):
            h = self._up_stage(i, h)
        return jax.nn.sigmoid(_f32(h))

    def _from_z(self, z: jax.Array) -> jax.Array:
        """[B, z_dim] → the bottom grid [B, s, s, widths[-1]]."""
        h = self.from_z(backend.cast(z, self.dtype))
        return h.reshape(z.shape[0], self.bottom, self.bottom, self.widths[-1])

    def _up_stage(self, i: int, h: jax.Array) -> jax.Array:
        """Decoder stage i: its residual blocks, then a 2× nearest upsample + 3×3 conv (the last
        stage's conv, after a GroupNorm + SiLU, gives the image's 3 logit channels)."""
        for block in self.dec_blocks[i]:
            h = block(h)
        conv = self.up[i]
        if i == len(self.up) - 1:
            h = jax.nn.silu(self.out_norm(h))
        if self.kernels == "cpu":  # = conv(upsample2(h)) on the small grid (test_layers.py)
            return layers.upsample2_conv(h, conv.kernel[...]) + conv.bias[...].astype(h.dtype)
        return conv(layers.upsample2(h))


class HVae(ResVae):
    """resvae with two latent scales, top-down (NVAE/VDVAE-style, one level): a global latent
    z_g [B, z_dim] as resvae's, and a local group z_l [B, s, s, local_channels] at s = twice the
    bottom grid (1/8 of the image with four widths), drawn given z_g:

        p(z_l | z_g) = N(mu_p(h), exp(logvar_p(h))),  h = the decoder's features at s × s,

    then merged into h (a 1×1 conv) before the rest of the decoder. The latent vector the
    samplers draw and `decode` takes is [z_g, ε] (`config.latent_size`), with
    z_l = mu_p + exp(logvar_p / 2)·ε, so N(0, I) on it is the model's hierarchical prior and every
    sampler, the KL and the likelihood work on it unchanged. `encode` gives a Gaussian over
    [z_g, ε]: resvae's for z_g, and for ε a 3×3 conv of the encoder's s × s features next to the
    decoder's top-down features of z_g = mu (so it knows what the prior expects there).
    Training draws in NVAE's order instead (`sample_posterior`): ε's posterior given the drawn
    z_g, whose top-down features the decoder then continues from.
    """

    def __init__(
        self,
        image_size: int,
        z_dim: int = 128,
        widths: tuple[int, ...] = (8, 16, 32, 64),
        blocks_per_stage: int = 1,
        local_channels: int = 1,
        *,
        rngs: nnx.Rngs,
        kernels: str = "cpu",
        dtype: jnp.dtype | None = None,
    ):
        super().__init__(
            image_size, z_dim, widths, blocks_per_stage, rngs=rngs, kernels=kernels, dtype=dtype
        )
        self.z_dim, self.local_channels = z_dim, local_channels
        self.side = 2 * self.bottom
        ch, zeros = widths[-2], nnx.initializers.zeros
        norm = lambda c: nnx.GroupNorm(c, num_groups=min(8, c), dtype=dtype, rngs=rngs)
        self.prior_norm = norm(ch)  # the heads start at N(0, I): zero-initialised convs
        self.prior = nnx.Conv(ch, 2 * local_channels, (3, 3), dtype=dtype, rngs=rngs,
                              kernel_init=zeros)  # fmt: skip
        self.posterior_norm = norm(2 * ch)
        self.posterior = nnx.Conv(2 * ch, 2 * local_channels, (3, 3), dtype=dtype, rngs=rngs,
                                  kernel_init=zeros)  # fmt: skip
        self.merge = nnx.Conv(local_channels, ch, (1, 1), dtype=dtype, rngs=rngs)

    def _top(self, z_g: jax.Array) -> jax.Array:
        """[B, z_dim] → the decoder's features at the local grid [B, s, s, widths[-2]]."""
        return self._up_stage(0, self._from_z(z_g))

    def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """x: [B, S, S, 3] in [0, 1] → (mu, logvar), each [B, latent_size] float32: the local
        group's posterior given z_g = mu (what the readers use: means, the likelihood's
        proposal)."""
        *_, local, bottom = self._bottom_up(x)  # the encoder's features at s × s and below
        mu, logvar = self._stats(bottom)
        m, lv = self._local_posterior(local, self._top(mu))
        return jnp.concatenate([mu, m], -1), jnp.concatenate([logvar, lv], -1)

    def sample_posterior(self, x: jax.Array, key: jax.Array) -> tuple[jax.Array, ...]:
        """(x̂, mu, logvar) of one posterior draw, as training takes it (NVAE's order): z_g from
        q(z_g | x), then ε from q(ε | x, z_g) given the decoder's features of that z_g, which
        the decoder then continues from. mu, logvar [B, latent_size]: the Gaussians drawn from
        (their KL to N(0, I) is this draw's)."""
        *_, local, bottom = self._bottom_up(x)
        mu, logvar = self._stats(bottom)
        k_g, k_l = jax.random.split(key)
        top = self._top(gaussian_draw(mu, logvar, k_g))
        m, lv = self._local_posterior(local, top)
        x_hat = self._decode_from(top, gaussian_draw(m, lv, k_l))
        return x_hat, jnp.concatenate([mu, m], -1), jnp.concatenate([logvar, lv], -1)

    def _local_posterior(self, local: jax.Array, top: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The encoder's and the decoder's features at s × s → ε's (mean, logvar), [B, s·s·c]."""
        both = jnp.concatenate([local, top.astype(local.dtype)], axis=-1)
        stats = _f32(self.posterior(jax.nn.silu(self.posterior_norm(both))))
        m, lv = jnp.split(stats.reshape(local.shape[0], -1, 2 * self.local_channels), 2, axis=-1)
        return m.reshape(local.shape[0], -1), lv.reshape(local.shape[0], -1)

    def decode(self, z: jax.Array) -> jax.Array:
        """z: [B, latent_size] = [z_g, ε] → images [B, S, S, 3] in [0, 1], float32."""
        return self._decode_from(self._top(z[:, : self.z_dim]), z[:, self.z_dim :])

    def _decode_from(self, h: jax.Array, eps: jax.Array) -> jax.Array:
        """The decoder's features of z_g at s × s and ε [B, s·s·c] → images."""
        eps = eps.reshape(h.shape[0], self.side, self.side, self.local_channels)
        stats = _f32(self.prior(jax.nn.silu(self.prior_norm(h))))
        mu_p, logvar_p = jnp.split(stats, 2, axis=-1)
        logvar_p = 5.0 * jnp.tanh(logvar_p / 5.0)  # a soft bound: std in [0.08, 12]
        z_l = mu_p + jnp.exp(0.5 * logvar_p) * eps
        h = h + self.merge(backend.cast(z_l, self.dtype))
        for i in range(1, len(self.up)):
            h = self._up_stage(i, h)
        return jax.nn.sigmoid(_f32(h))


def _options(config: ml_collections.ConfigDict) -> dict:
    """The model's `kernels` and `dtype` (config.kernels and config.dtype, resolved)."""
    return {
        "kernels": backend.kernels(config.kernels),
        "dtype": backend.compute_dtype(config.dtype),
    }


def _vae_cats_v1(config: ml_collections.ConfigDict, rngs: nnx.Rngs) -> nnx.Module:
    return VaeCatsV1(config.model.z_dim, config.model.h_dim, rngs=rngs, **_options(config))


def _resvae(config: ml_collections.ConfigDict, rngs: nnx.Rngs) -> nnx.Module:
    m = config.model
    return ResVae(
        config.image_size, m.z_dim, m.widths, m.blocks_per_stage, rngs=rngs, **_options(config)
    )


def _hvae(config: ml_collections.ConfigDict, rngs: nnx.Rngs) -> nnx.Module:
    m = config.model
    return HVae(
        config.image_size,
        m.z_dim,
        m.widths,
        m.blocks_per_stage,
        m.local_channels,
        rngs=rngs,
        **_options(config),
    )


MODELS: dict[str, Callable[[ml_collections.ConfigDict, nnx.Rngs], nnx.Module]] = {
    "vae_cats_v1": _vae_cats_v1,
    "resvae": _resvae,
    "hvae": _hvae,
}
assert tuple(MODELS) == MODEL_NAMES, "config.MODEL_NAMES lists the networks of MODELS"


def output_kernel(config: ml_collections.ConfigDict, state: nnx.State) -> jax.Array:
    """The kernel of the configured model's last decoder layer, read from `state` (its
    parameters, or gradients shaped like them): what the adversarial term's adaptive weight
    compares the two terms' gradients on."""
    if config.model.name in ("resvae", "hvae"):
        layer = state["up"][len(config.model.widths) - 1]
    else:  # vae_cats_v1
        layer = state["decode_layers"][4]
    return jax.tree.leaves(layer["kernel"])[0]


def init_eager(config: ml_collections.ConfigDict, seed: int | None = None) -> nnx.Module:
    """Constructs the model named by `config.model.name`, its initialisers run op by op (each
    compiles on its own: slow to run, meant for `nnx.eval_shape`)."""
    seed = config.seed if seed is None else seed
    return MODELS[config.model.name](config, nnx.Rngs(params=seed))


def init_compiled(config: ml_collections.ConfigDict, seed: int | None = None) -> nnx.Module:
    """Makes the model named by `config.model.name`, initialised from `seed` (or config.seed).

    The initialisers run as ONE compiled program: constructed op by op, every initialiser
    compiles on its own (~18 s for the default model at 128² on a 2-core CPU). On CPU XLA's
    optimisation passes are off for this run-once program (its compile: 10 s → 1.5 s); the values
    equal the op-by-op ones to float rounding.
    """
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: init_eager(config, seed)))
    options = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else {}
    init = jax.jit(lambda: nnx.state(init_eager(config, seed))).lower().compile(options)
    return nnx.merge(graphdef, init())
