"""task=predict lists at most as many classes as the net knows: its default top_k (3) on a
2-class net writes top1 and top2, and a larger top_k is capped the same way, not an error."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

from tests.conftest import FAST, all_runs, cli_in_process

TWO_CLASSES = ["model=tiny", "data=shapes_pair", "data.n_samples=200", "analysis=none", *FAST]


@pytest.mark.slow
def test_default_and_large_top_k_are_capped_at_the_number_of_classes(tmp_path) -> None:
    out = tmp_path / "outputs"
    trained = cli_in_process(*TWO_CLASSES, out=out)
    assert trained.returncode == 0, trained.stderr[-2000:]
    [run] = all_runs(out)
    picture = tmp_path / "images" / "one.png"
    picture.parent.mkdir()
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(picture)
    for top_k in ([], ["predict.top_k=5"]):  # the default (3), and more than 2
        output = tmp_path / f"predictions{len(top_k)}.csv"
        args = ["task=predict", f"resume={run.info.run_id}", f"predict.path={picture.parent}"]
        result = cli_in_process(*args, f"predict.output={output}", *top_k, out=out)
        assert result.returncode == 0, result.stderr[-2000:]
        [header, row] = list(csv.reader(output.open()))
        ranks = ["top1_class", "top1_prob", "top2_class", "top2_prob"]
        assert header == ["path", "class", "confidence", *ranks]
        assert row[3] != row[5]  # the two classes, most probable first
