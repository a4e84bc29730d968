"""A real notebook runs: functions from a cell go to worker processes, and the bar is a widget.

``examples/notebook.ipynb`` is executed headlessly by nbclient in a fresh IPython kernel of this
interpreter, as Jupyter would run it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

NOTEBOOK = Path(__file__).resolve().parent.parent / "examples" / "notebook.ipynb"
# Seconds for one cell: a pool start and a fraction of a second of work.
CELL_TIMEOUT = 60


def _text(output: dict[str, Any]) -> str:
    if output["output_type"] == "stream":
        return str(output["text"])
    return str(output.get("data", {}).get("text/plain", ""))


@pytest.fixture(scope="module")
def executed() -> Any:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    client.execute()
    return notebook


def _outputs(notebook: Any, marker: str) -> list[dict[str, Any]]:
    (cell,) = [c for c in notebook.cells if c.cell_type == "code" and marker in c.source]
    return list(cell.outputs)


@pytest.mark.timeout(4 * CELL_TIMEOUT + 60)
def test_functions_and_lambdas_from_cells_run_in_workers(executed: Any) -> None:
    for cell in executed.cells:
        for output in cell.get("outputs", []):
            assert output["output_type"] != "error", "".join(output.get("traceback", []))
    assert _text(_outputs(executed, "steps = pmap")[0]) == "181"  # max steps below 2001
    lambda_cell = "".join(map(_text, _outputs(executed, "lambda x")))
    assert "[100, 101, 102, 103, 104]" in lambda_cell
    assert "['HELLO!', 'NOTEBOOK!']" in lambda_cell
    assert "".join(map(_text, _outputs(executed, "for value in imap"))).split() == [
        "111",
        "118",
        "178",
    ]


@pytest.mark.timeout(4 * CELL_TIMEOUT + 60)
def test_progress_bar_is_a_widget_in_a_notebook(executed: Any) -> None:
    outputs = _outputs(executed, 'progress="collatz"')
    assert _text(outputs[-1]) == "500"
    if importlib.util.find_spec("ipywidgets") is None:
        # tqdm.auto falls back to a text bar (and a warning) without ipywidgets.
        assert any("collatz" in _text(o) for o in outputs if o["output_type"] == "stream")
        return
    widgets = [
        o for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})
    ]
    assert widgets, f"no widget among the outputs: {outputs}"
    assert not any("collatz" in _text(o) for o in outputs if o["output_type"] == "stream")
