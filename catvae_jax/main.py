"""Command line: python -m catvae_jax.main --config configs/exp1.py --workdir runs/exp1.

Any config field can be overridden with --config.<field>=<value>; --show_config prints every
field with its value and documentation, and exits. A bad field or value is a one-line error
with exit code 2; a diverging run exits with code 1.
"""

from __future__ import annotations

import sys

import jax
from absl import flags

from catvae_jax import cli
from catvae_jax import config as config_lib
from catvae_jax.after_training import train_and_evaluate
from catvae_jax.train import malloc, timing
from catvae_jax.train import workdir as workdir_lib

_CONFIG = cli.define_config_file("default.py", "Config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and outputs.")
_SHOW_CONFIG = flags.DEFINE_bool(
    "show_config", False, "Print every config field with its value and documentation, and exit."
)
flags.register_multi_flags_validator(
    ["workdir", "show_config"],
    lambda values: values["workdir"] is not None or values["show_config"],
    "flag --workdir must have a value (or use --show_config)",
)
_COORDINATOR = flags.DEFINE_string("coordinator", None, "host:port of process 0 (multi-process).")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "Processes in a multi-process run.", lower_bound=1
)
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "This process's index, 0-based.", lower_bound=0
)


def main(argv: list[str]) -> None:
    timing.mark_process_start()  # the run's time breakdown starts with the imports before here
    config = _CONFIG.value
    if _SHOW_CONFIG.value:
        cli.print_or_quiet(config_lib.describe(config))
        return
    with cli.user_errors():
        # reuse freed memory: far fewer page faults per XLA:CPU step (CPU kernels only)
        malloc.configure(kernels=config.kernels)
    cli.init_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    print(
        f"devices: {jax.device_count()} × {jax.devices()[0].platform} "
        f"({cli.plural(jax.process_count(), 'process', 'processes')}): {jax.devices()}",
        flush=True,
    )
    with cli.user_errors():
        result = train_and_evaluate(config, _WORKDIR.value)
        if jax.process_index() == 0:  # a finished run's command, for the model card of an export
            workdir_lib.record_command(_WORKDIR.value, sys.argv)
    print(f"process {jax.process_index()}: params sha256 {result['params_sha256']}", flush=True)
    if jax.process_index() == 0:
        print(
            f"done: step {result['step']}, val_loss {result['val_loss']:.4g}, "
            f"val_ssim {result['val_ssim']:.4f}, outputs in {_WORKDIR.value}",
            flush=True,
        )


def run() -> None:
    cli.run_app(main)


if __name__ == "__main__":
    sys.exit(run())
