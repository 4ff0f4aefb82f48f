"""The Colab TPU notebook runs top to bottom on CPU with a shrunken parameter cell."""

import os

import nbformat
from conftest import REPO, subprocess_env
from nbclient import NotebookClient

NOTEBOOK = os.path.join(REPO, "experiments", "colab_tpu.ipynb")


def test_colab_notebook_executes_on_cpu(tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1
    params[0].source = "\n".join(
        [
            "REPO = None",
            "INSTALL = False",
            f"WORKDIR = {str(tmp_path / 'run')!r}",
            "OVERRIDES = {'image_size': 16, 'batch_size': 8, 'model.z_dim': 8,",
            "             'model.widths': (8, 16, 16, 16), 'data.num_train': 32,",
            "             'data.num_validation': 8, 'num_epochs': 1, 'wandb.mode': 'disabled',",
            "             'progress_bar': False, 'loss.lpips_weight': 0.0}",
        ]
    )
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": REPO}}
    ).execute(env=subprocess_env(measured=False))  # the kernel: conftest.subprocess_env says why
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    pngs = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pngs) == 3  # samples, reconstructions, a fresh grid from the loaded model
    assert (tmp_path / "run" / "checkpoints").is_dir()
    text = "".join(o.get("text", "") for o in outputs)
    assert "checkpoint step 4" in text
