"""A step with the batch sharded over 4 CPU devices equals the 1-device step (float tolerance).

The device count must be set before JAX starts, so the check runs in a subprocess.
"""

import json

from conftest import run_python

# Summation order differs across devices, so results agree to float32 rounding, not bit for bit:
GRAD_TOLERANCE = 1e-4  # max |Δgrad| / max |grad| of one step's gradients
LOSS_TOLERANCE = 1e-5  # relative difference of the loss after 3 full train steps
# Parameters after AdamW steps are not compared elementwise: Adam divides by sqrt(v), so a
# gradient entry near 0 turns a rounding difference into a full ±lr step.

SCRIPT = r"""
import json, sys
sys.path.insert(0, "tests")
import jax, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from conftest import tiny_config
from catvae_jax import models, steps

config = tiny_config()
batches = np.random.default_rng(0).integers(0, 256, (3, 8, 16, 16, 3), dtype=np.uint8)

def run(devices):
    mesh = Mesh(np.array(devices), ("data",))
    graphdef, state = steps.init_state(config, models.build(config))
    state = jax.device_put(state, NamedSharding(mesh, P()))
    step = jax.jit(steps.make_train_step(graphdef, config, jax.random.key(0)), donate_argnums=0)
    first = jax.device_put(batches[0], NamedSharding(mesh, P("data")))
    grads_fn = jax.jit(lambda p, b: steps.loss_and_grads(graphdef, config, p, b, jax.random.key(1),
                                                          jax.numpy.float32(0.5))[1])
    grads = jax.device_get(grads_fn(state.params, first))
    for b in batches:
        state, metrics = step(state, jax.device_put(b, NamedSharding(mesh, P("data"))))
    return grads, float(metrics["train_loss"]), len(first.addressable_shards)

g4, loss4, shards4 = run(jax.devices())
g1, loss1, _ = run(jax.devices()[:1])
scale = max(float(np.max(np.abs(b))) for b in jax.tree.leaves(g1))
diff = max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(g4), jax.tree.leaves(g1)))
print(json.dumps({"devices": jax.device_count(), "shards": shards4, "grad_rel_diff": diff / scale,
                  "loss4": loss4, "loss1": loss1}))
"""


def test_four_device_step_equals_one_device_step():
    proc = run_python(SCRIPT, env={"XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(result)
    assert result["devices"] == 4 and result["shards"] == 4
    assert result["grad_rel_diff"] < GRAD_TOLERANCE
    assert abs(result["loss4"] - result["loss1"]) < LOSS_TOLERANCE * abs(result["loss1"])
