"""notebooks/score.ipynb runs under papermill with nothing but its injected parameters."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from ride_duration import batch
from ride_duration.models import load_model

REPO = Path(__file__).resolve().parent.parent
SCORE_NOTEBOOK = REPO / "notebooks" / "score.ipynb"


def test_the_score_notebook_has_one_parameters_cell():
    notebook = nbformat.read(SCORE_NOTEBOOK, as_version=4)
    tagged = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    for name in ("taxi_type", "year", "month", "model", "output"):
        assert f"{name} = " in tagged[0].source


@pytest.mark.timeout(300)
def test_papermill_scores_the_month_it_is_given(model_files, trips, tmp_path, monkeypatch):
    import papermill

    # Relative parameters resolve against the notebook's folder (--cwd), as on the command line.
    model = os.path.relpath(model_files[1], SCORE_NOTEBOOK.parent)
    output = tmp_path / "predictions"
    monkeypatch.delenv("BATCH_MODEL", raising=False)
    executed = papermill.execute_notebook(
        str(SCORE_NOTEBOOK),
        str(tmp_path / "scored.ipynb"),
        parameters={"taxi_type": "green", "year": 2021, "month": 2, "model": model, "output": str(output)},
        cwd=str(SCORE_NOTEBOOK.parent),
        kernel_name="python3",
        execution_timeout=240,
        progress_bar=False,
        log_output=False,
    )
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in executed.cells)
    written = sorted(output.rglob("*.parquet"))
    assert [p.relative_to(output).parent.as_posix() for p in written] == ["taxi_type=green/year=2021/month=02"]
    scored = pd.read_parquet(written[0])
    assert list(scored.columns) == list(batch.OUTPUT_COLUMNS)
    assert len(scored) == len(trips[1])
    assert scored["ride_id"].str.startswith("green/2021/02_").all()
    assert written[0].stem == scored["model_version"].iloc[0] == load_model(model_files[1]).version
    printed = "".join(o.get("text", "") for c in executed.cells for o in c.get("outputs", []))
    assert f"{len(trips[1]):,} rides scored" in printed
