"""The Colab TPU notebook runs top to bottom on CPU with a shrunken parameter cell: its install
cell's pip command for a checkout (`-e PATH[tpu]`, as a --dry-run), a folder of images as
`IMAGES`, training, pictures. The committed notebook shows the outputs of that run:

    PYTHONPATH=tests .venv/bin/python tests/e2e/test_notebook.py  # re-executes it, writes them
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import tempfile

import nbformat
import numpy as np
from conftest import REPO, subprocess_env
from nbclient import NotebookClient
from PIL import Image

from catvae_jax.data import synthetic

NOTEBOOK = os.path.join(REPO, "experiments", "colab_tpu.ipynb")
# The kernel runs in a scratch folder where `checkout` is this repository and `cats` a folder of
# drawn cats, so the outputs name no path of this machine.
PARAMETERS = """\
REPO = "checkout"  # a link to this repository: installed as a checkout
INSTALL = True
PIP_OPTIONS = ["--dry-run", "--no-deps", "--no-build-isolation"]  # the install's form, not its work
WORKDIR = "catvae_runs/default"
IMAGES = "cats"  # 48 synthetic cats as PNG files
DATA_DIR = "tensorflow_datasets"
WANDB = False
OVERRIDES = {"image_size": 16, "batch_size": 8, "model.z_dim": 8, "model.widths": (8, 16),
             "model.name": "resvae",
             "num_epochs": 1, "wandb.mode": "disabled", "progress_bar": False,
             "loss.lpips_weight": 0.0}"""


# tqdm.auto's note that ipywidgets is missing (Colab has it) names this machine's site-packages.
KERNEL_ENV = {"PYTHONWARNINGS": "ignore:IProgress not found"}


def _is_parameters(cell) -> bool:
    return "parameters" in cell.metadata.get("tags", [])


def sources_digest(nb) -> str:
    """sha256 of the code cells other than the parameters: what the committed outputs show."""
    code = [c.source for c in nb.cells if c.cell_type == "code" and not _is_parameters(c)]
    return hashlib.sha256("\n\0".join(code).encode()).hexdigest()


def execute(scratch: str):
    """The committed notebook, run on CPU in `scratch` with PARAMETERS (its parameters cell's
    source is restored afterwards)."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    (params,) = [c for c in nb.cells if _is_parameters(c)]
    source, params.source = params.source, PARAMETERS
    os.symlink(REPO, os.path.join(scratch, "checkout"))
    cats = os.path.join(scratch, "cats")
    os.mkdir(cats)
    for i, cat in enumerate(synthetic.make_cats(np.arange(48), 32, seed=3)):
        Image.fromarray(cat).save(os.path.join(cats, f"cat_{i:02d}.png"))
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": scratch}}
    ).execute(env=subprocess_env(KERNEL_ENV, measured=False))  # conftest.subprocess_env: why
    params.source, params.outputs = source, []
    nb.metadata["catvae_jax"] = {"outputs_of_sources_sha256": sources_digest(nb)}
    return nb


def _outputs(nb) -> list:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]


def _text(nb) -> str:
    return "".join(o.get("text", "") for o in _outputs(nb))


def test_colab_notebook_executes_on_cpu(tmp_path):
    nb = execute(str(tmp_path))
    outputs = _outputs(nb)
    assert not [o for o in outputs if o.get("output_type") == "error"]
    pngs = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pngs) == 3  # samples, reconstructions, a fresh grid from the loaded model
    assert (tmp_path / "catvae_runs" / "default" / "checkpoints").is_dir()
    text = _text(nb)
    # The install cell's pip command for a checkout is one pip accepts (a bare path is not).
    assert "$ pip install -q --dry-run --no-deps --no-build-isolation -e './checkout[tpu]'" in text
    assert "(no restart needed)" in text
    assert "cats: 48 files" in text
    assert re.search(r"checkpoint step [1-9]", text)
    assert list((tmp_path / "tensorflow_datasets").glob("cat_folder/16px_*/1.0.0"))  # IMAGES used


def test_committed_notebook_shows_current_outputs():
    """The committed notebook carries the outputs of its current cells (regenerate them with
    `PYTHONPATH=tests python tests/e2e/test_notebook.py` after editing a cell)."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    recorded = nb.metadata.get("catvae_jax", {}).get("outputs_of_sources_sha256")
    rerun = "PYTHONPATH=tests python tests/e2e/test_notebook.py"
    assert recorded == sources_digest(nb), f"stale outputs: run {rerun}"
    outputs = _outputs(nb)
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 3
    assert not [o for o in outputs if o.get("output_type") == "error"]
    written = nbformat.writes(nb)
    for path in (REPO, "site-packages", tempfile.gettempdir()):  # no path of the machine it ran on
        assert path not in written


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as scratch:
        nbformat.write(execute(scratch), NOTEBOOK)
    print(f"wrote {NOTEBOOK}", file=sys.stderr)
