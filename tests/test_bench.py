"""make bench's pieces still run against today's config and store (figures are never asserted:
the bench measures ratios on noisy cores, the suite only checks that it can)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cnnexp import bench


def test_the_plain_loop_trains_the_configured_net_on_the_configured_data(monkeypatch) -> None:
    monkeypatch.setattr(bench, "EPOCHS", 1)
    seconds, images = bench.plain_loop_seconds(["model=tiny", "data=digits", "data.train_size=64"])
    assert seconds > 0 and images == 64


@pytest.mark.slow  # two fresh processes, as the bench times them
def test_a_new_store_is_opened_from_the_template_and_an_existing_one_again(tmp_path: Path) -> None:
    db = tmp_path / "store" / "mlflow.db"
    assert bench.store_open_seconds(db) > 0 and db.is_file()
    assert bench.store_open_seconds(db) > 0
