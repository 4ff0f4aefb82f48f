"""Imports go one way: no cycle between catvae_jax modules, and a command loads only its stack."""

from __future__ import annotations

import json

from conftest import run_python


def test_data_prepare_never_imports_the_training_stack(tmp_path):
    """A real `python -m catvae_jax.data prepare` run, then the catvae_jax modules it loaded."""
    code = f"""
import json, runpy, sys
sys.argv = ["catvae_jax.data", "prepare", "--source", "synthetic", "--data_dir", {str(tmp_path)!r},
            "--image_size", "16", "--num_train", "4", "--num_validation", "2", "--num_test", "2",
            "--no_progress"]
try:
    runpy.run_module("catvae_jax.data", run_name="__main__", alter_sys=True)
except SystemExit as e:
    assert not e.code, e.code
print(json.dumps(sorted(m for m in sys.modules if m.startswith(("catvae_jax", "orbax")))))
"""
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "data set: synthetic_cats/16px_seed0_n4-2-2" in proc.stdout
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "catvae_jax.data.builders" in loaded  # it did prepare
    for heavy in ("catvae_jax.train", "catvae_jax.steps", "catvae_jax.models", "orbax.checkpoint"):
        assert heavy not in loaded, loaded
