"""Every notebook under colabs/ executes top to bottom without an error.

The notebooks read ``AWT_COLAB_SMOKE=1`` in their first cell and shrink
their run, so each finishes in about a minute on a CPU (and
``AWT_COLAB_WORKDIR``, where they write, if they support it); they are committed
without outputs, and this test is what keeps them from rotting.
"""

import glob
import os

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "colabs", "*.ipynb")))


def test_notebooks_found():
  names = [os.path.basename(p) for p in NOTEBOOKS]
  assert "sparsity_vs_robustness.ipynb" in names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_committed_without_outputs(path):
  nb = nbformat.read(path, as_version=4)
  for cell in nb.cells:
    if cell.cell_type == "code":
      assert cell.outputs == [] and cell.execution_count is None, path


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs(path, monkeypatch, tmp_path):
  # The kernel inherits this environment: small sizes, the repository on
  # the path, and conftest's forced host devices.
  monkeypatch.setenv("AWT_COLAB_SMOKE", "1")
  monkeypatch.setenv(
    "PYTHONPATH",
    os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])),
  )
  monkeypatch.setenv("MPLBACKEND", "Agg")
  # A fresh output directory, so nothing is reused from an earlier run.
  monkeypatch.setenv("AWT_COLAB_WORKDIR", str(tmp_path / "workdir"))
  nb = nbformat.read(path, as_version=4)
  # Generous limits, as hang guards only: a loaded machine may take
  # minutes to start the kernel (nbclient's default: 60 s) or to deliver a
  # cell's last output (default: 4 s, after which outputs are dropped).
  client = NotebookClient(
    nb,
    kernel_name="python3",
    timeout=900,
    startup_timeout=900,
    iopub_timeout=300,
    resources={"metadata": {"path": ROOT}},
  )
  client.execute()  # raises CellExecutionError naming the failing cell
  errors = [
    o
    for c in nb.cells
    if c.cell_type == "code"
    for o in c.outputs
    if o.output_type == "error"
  ]
  assert not errors
  assert any(c.get("outputs") for c in nb.cells if c.cell_type == "code")
