"""JAX's persistent compilation cache, on by default (catvae_jax/compile_cache.py): a second CLI
run of a config compiles nothing, and both runs print and write their time breakdown."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import REPO
from test_cli import TINY

from catvae_jax.train import timing


def _env_without_cache_settings(tmp_path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    env.pop("COVERAGE_PROCESS_CONFIG", None)  # two compile-bound runs: unmeasured
    return {**env, "XDG_CACHE_HOME": str(tmp_path / "xdg")}


def test_a_second_cli_run_of_a_config_compiles_nothing(tmp_path):
    """Two runs of one tiny config with an empty user cache: the first fills
    $XDG_CACHE_HOME/catvae_jax/jax, the second reads every program from it. Both print and
    write their breakdown, with the start-up (imports) as its first row."""
    env = _env_without_cache_settings(tmp_path)
    # One width: the first run compiles every program cold; the smallest model does it fastest.
    flags = [
        *TINY,
        "--config.model.widths=(8,)",
        "--config.max_steps=2",
        "--config.flow_prior=False",
    ]
    summaries = []
    for name in ("first", "second"):
        cmd = [sys.executable, "-m", "catvae_jax.main", "--workdir", str(tmp_path / name), *flags]
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "time breakdown:" in proc.stdout and "startup" in proc.stdout
        summaries.append(json.loads((tmp_path / name / "timing.json").read_text()))
    first, second = summaries
    assert any((tmp_path / "xdg" / "catvae_jax" / "jax").iterdir())
    assert first["cache"]["misses"] > 0
    assert second["cache"] == {"hits": first["cache"]["hits"] + first["cache"]["misses"],
                               "misses": 0}  # fmt: skip
    for summary in summaries:
        parts = summary["parts"]
        assert set(parts) == set(timing.PARTS) and min(parts.values()) >= 0
        assert sum(parts.values()) <= summary["wall_s"] + 0.01
        assert summary["parts"]["startup"] > 0.5  # the interpreter and the imports of jax & co
