"""Execute the notebooks (small settings: PERSONA_LENS_NOTEBOOK_QUICK=1) and require no errors."""

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["quickstart", "billy_projection"])
def test_notebook_executes(name, tmp_path, monkeypatch):
    from nbclient import NotebookClient

    monkeypatch.setenv("PERSONA_LENS_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("PERSONA_LENS_NOTEBOOK_DIR", str(tmp_path))
    monkeypatch.setenv("TQDM_DISABLE", "1")
    if os.getloadavg()[0] > (os.cpu_count() or 1):
        # an oversubscribed machine (other jobs running): OpenMP spin-waiting makes multi-threaded
        # torch many times slower there, so the kernel gets one thread
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError on the first failing cell
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.get("execution_count") for c in code)
