"""`make studies` (cnnexp/studies.py): a study rerun at a tiny budget becomes a dated table page."""

from __future__ import annotations

from pathlib import Path

import pytest

from cnnexp import docs, studies


def test_the_small_budget_is_one_seed_two_epochs_and_given_overrides_win() -> None:
    assert studies.budget("kernel_3x3_vs_5x5", False, []) == ["seed=0", "trainer.max_epochs=2"]
    assert studies.budget("kernel_3x3_vs_5x5", False, ["seed=3"]) == [
        "trainer.max_epochs=2",
        "seed=3",
    ]
    assert studies.budget("kernel_3x3_vs_5x5", True, ["data=digits"]) == ["data=digits"]
    assert "trainer.max_epochs=" in studies.budget("epochs_fit", False, [])[0]  # its axis kept


def test_every_study_has_a_question_and_a_section_in_the_studies_page() -> None:
    page = (studies.ROOT / "docs" / "studies.md").read_text()
    for study in studies.studies():
        assert studies.question(study).endswith("."), study
        assert "python -m cnnexp" not in studies.question(study)
        assert f"<!-- cnnexp:study {study} -->" in page


def test_a_study_without_a_table_says_how_to_make_one(tmp_path: Path) -> None:
    assert "none yet; `python -m cnnexp.studies orb_vs_cnn`" in docs.study("orb_vs_cnn", tmp_path)


@pytest.mark.slow
def test_a_rerun_writes_its_table_with_date_seeds_machine_and_command(tmp_path: Path) -> None:
    out, pages = tmp_path / "outputs", tmp_path / "docs"
    tiny = ["data=digits", "trainer.max_epochs=1", "analysis=none"]
    args = ["--docs", str(pages / "studies"), "--output-dir", str(out)]
    code = studies.main(["kernel_3x3_vs_5x5", *tiny, *args])
    assert code == 0
    text = (pages / "studies" / "kernel_3x3_vs_5x5.md").read_text()
    assert "- **date**: 20" in text and "(UTC)" in text
    assert f"- **machine**: {studies.machine()}" in text
    assert "- **seeds**: 0; 2 runs" in text
    command = "python -m cnnexp -m +experiment=kernel_3x3_vs_5x5 seed=0 data=digits"
    assert command in text
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| run | n | seeds | model.name | params |")
    assert {r.split(" | ")[0] for r in rows[1:]} == {
        "| stacked3x3-relu-digits",
        "| single5x5-relu-digits",
    }
    for figure in studies.FIGURES:
        assert (pages / "studies" / "kernel_3x3_vs_5x5" / figure).stat().st_size > 1000
    assert "Table**: [kernel_3x3_vs_5x5]" in docs.study("kernel_3x3_vs_5x5", pages)
