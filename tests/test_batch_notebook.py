"""notebooks/score.ipynb runs under papermill with nothing but its injected parameters, and
writes what batch/score.py writes for the same month: its cells call the script's step functions."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pandas as pd
import pyarrow.parquet as pq
import pytest

from ride_duration import batch
from ride_duration.models import load_model

REPO = Path(__file__).resolve().parent.parent
SCORE_NOTEBOOK = REPO / "notebooks" / "score.ipynb"


def run_notebook(tmp_path: Path, **parameters):
    import papermill

    return papermill.execute_notebook(
        str(SCORE_NOTEBOOK),
        str(tmp_path / "scored.ipynb"),
        parameters=parameters,
        cwd=str(SCORE_NOTEBOOK.parent),  # relative parameters resolve against it, as with --cwd
        kernel_name="python3",
        execution_timeout=240,
        progress_bar=False,
        log_output=False,
    )


def test_the_score_notebook_has_one_parameters_cell():
    notebook = nbformat.read(SCORE_NOTEBOOK, as_version=4)
    tagged = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    for name in ("taxi_type", "year", "month", "model", "output"):
        assert f"{name} = " in tagged[0].source


# The default chunk holds all of green 2021-02, so the script writes one row group, as the
# notebook does: the same bytes. With smaller chunks the script writes one row group per
# chunk and the notebook one for the month: the same rows.
@pytest.mark.timeout(300)
@pytest.mark.parametrize("chunk_rows", [None, 10_000], ids=["one-chunk", "many-chunks"])
def test_papermill_scores_the_month_it_is_given(chunk_rows, model_files, trips, tmp_path, monkeypatch):
    monkeypatch.delenv("BATCH_MODEL", raising=False)
    if chunk_rows is None:
        monkeypatch.delenv("BATCH_CHUNK_ROWS", raising=False)
    else:
        monkeypatch.setenv("BATCH_CHUNK_ROWS", str(chunk_rows))
    month = ["--taxi-type", "green", "--year", "2021", "--month", "2"]
    script = subprocess.run(
        [sys.executable, "batch/score.py", *month, "--model", str(model_files[1]), "--output", str(tmp_path / "cli")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert script.returncode == 0, script.stderr

    model = os.path.relpath(model_files[1], SCORE_NOTEBOOK.parent)
    output = tmp_path / "predictions"
    executed = run_notebook(tmp_path, taxi_type="green", year=2021, month=2, model=model, output=str(output))

    assert any("injected-parameters" in c.metadata.get("tags", []) for c in executed.cells)
    written = sorted(output.rglob("*.parquet"))
    assert [p.relative_to(output).parent.as_posix() for p in written] == ["taxi_type=green/year=2021/month=02"]
    [by_script] = sorted((tmp_path / "cli").rglob("*.parquet"))
    assert by_script.relative_to(tmp_path / "cli") == written[0].relative_to(output)
    scored = pd.read_parquet(written[0])
    if chunk_rows is None:
        assert written[0].read_bytes() == by_script.read_bytes()
    else:
        assert pq.ParquetFile(by_script).metadata.num_row_groups > 1  # the script did read in chunks
        pd.testing.assert_frame_equal(scored, pd.read_parquet(by_script), check_exact=True)
    assert list(scored.columns) == list(batch.OUTPUT_COLUMNS)
    assert len(scored) == len(trips[1])
    assert scored["ride_id"].str.startswith("green/2021/02_").all()
    assert written[0].stem == scored["model_version"].iloc[0] == load_model(model_files[1]).version
    printed = "".join(o.get("text", "") for c in executed.cells for o in c.get("outputs", []))
    assert f"{len(trips[1]):,} rides scored" in printed


@pytest.mark.timeout(120)
def test_papermill_with_a_bad_parameter_stops_before_reading_and_writes_nothing(model_files, tmp_path):
    import papermill

    output = tmp_path / "predictions"
    model = os.path.relpath(model_files[1], SCORE_NOTEBOOK.parent)
    with pytest.raises(papermill.PapermillExecutionError) as failed:
        run_notebook(tmp_path, taxi_type="blue", year=2021, month=2, model=model, output=str(output))
    assert "cannot score 'blue' trips" in failed.value.evalue
    assert not output.exists()
