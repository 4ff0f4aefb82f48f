"""Data parallel over simulated CPU devices equals one device with the same global batch.

The device count must be set before JAX starts, so the check runs in a subprocess with 8
simulated devices; meshes over 4 of them (the foundation's check) and all 8 (the scale issue's)
are each compared with a mesh over 1, and so is the two-player step of the adversarial term
over 8 (its discriminator replicated like the parameters).
"""

import json

from conftest import run_python

# Summation order differs across devices, so results agree to float32 rounding, not bit for bit:
GRAD_TOLERANCE = 1e-4  # max |Δgrad| / max |grad| of one step's gradients
LOSS_TOLERANCE = 1e-5  # relative difference of the loss at the last of 3 train steps
# Parameters after AdamW steps: Adam divides by sqrt(v), so a gradient entry near 0 turns a
# rounding difference into up to a ±lr step. The bound is therefore 2·lr per step; almost every
# parameter is far closer (the median difference is also checked).
STEPS, LR = 3, 3e-3
PARAM_TOLERANCE = 2 * LR * STEPS
PARAM_MEDIAN_TOLERANCE = 1e-5

SCRIPT = r"""
import json, sys
sys.path.insert(0, "tests")
import jax, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from conftest import tiny_config
from catvae_jax.model import networks
from catvae_jax.train import steps
from catvae_jax.train import state as state_lib

config = tiny_config()
config.learning_rate = %(lr)r
adversarial = tiny_config()
adversarial.learning_rate = %(lr)r
adversarial.loss.adversarial_weight = 0.5
batches = np.random.default_rng(0).integers(0, 256, (%(steps)d, 8, 16, 16, 3), dtype=np.uint8)

def run(devices, config=config):
    mesh = Mesh(np.array(devices), ("data",))
    graphdef, state = state_lib.init_state(config, networks.init_compiled(config))
    state = jax.device_put(state, NamedSharding(mesh, P()))
    step = jax.jit(steps.make_train_step(graphdef, config, jax.random.key(0)), donate_argnums=0)
    first = jax.device_put(batches[0], NamedSharding(mesh, P("data")))
    grads_fn = jax.jit(lambda p, b: steps.loss_and_grads(graphdef, config, p, b, jax.random.key(1),
                                                          jax.numpy.float32(0.5))[1])
    grads = jax.device_get(grads_fn(state.params, first))
    schedule = jax.device_put(steps.schedule(config, len(batches)), NamedSharding(mesh, P()))
    for b in batches:
        state, metrics = step(state, jax.device_put(b, NamedSharding(mesh, P("data"))), schedule)
    loss = float(metrics["train_loss"])
    params = jax.device_get((state.params, state.disc))  # disc: None without the term
    return grads, params, loss, len(first.addressable_shards)

leaves = lambda t: [np.asarray(x) for x in jax.tree.leaves(t)]
g_1, p_1, loss_1, _ = run(jax.devices()[:1])
scale = max(float(np.max(np.abs(b))) for b in leaves(g_1))
results = {}
runs = {"4": (4, config), "8": (8, config), "8-adversarial": (8, adversarial)}
for name, (n, cfg) in runs.items():
    if name == "8-adversarial":
        g_1, p_1, loss_1, _ = run(jax.devices()[:1], cfg)
        scale = max(float(np.max(np.abs(b))) for b in leaves(g_1))
    g_n, p_n, loss_n, shards = run(jax.devices()[:n], cfg)
    grad = max(float(np.max(np.abs(a - b))) for a, b in zip(leaves(g_n), leaves(g_1)))
    diffs = np.concatenate([np.abs(a - b).ravel() for a, b in zip(leaves(p_n), leaves(p_1))])
    results[name] = {"shards": shards, "grad_rel_diff": grad / scale,
                  "param_max_diff": float(diffs.max()),
                  "param_median_diff": float(np.median(diffs)), "loss_n": loss_n, "loss_1": loss_1}
print(json.dumps({"devices": jax.device_count(), "results": results}))
"""


def test_sharded_steps_equal_one_device():
    code = SCRIPT % {"lr": LR, "steps": STEPS}
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    proc = run_python(code, env=env, measured=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    print(out)
    assert out["devices"] == 8 and sorted(out["results"]) == ["4", "8", "8-adversarial"]
    for name, result in out["results"].items():
        _check(int(name.split("-")[0]), result)


def _check(devices: int, result: dict) -> None:
    assert result["shards"] == devices
    assert result["grad_rel_diff"] < GRAD_TOLERANCE
    assert abs(result["loss_n"] - result["loss_1"]) < LOSS_TOLERANCE * abs(result["loss_1"])
    assert result["param_max_diff"] < PARAM_TOLERANCE
    assert result["param_median_diff"] < PARAM_MEDIAN_TOLERANCE
