"""The documentation: the site builds strict, the reference holds exactly the schema's keys, the
README stays short and keeps its two commands."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import DictConfig, OmegaConf

from cnnexp import docs, schema
from cnnexp.models.graph import BLOCKS
from tests.conftest import ROOT

README = ROOT / "README.md"
KEY = re.compile(r"^\| `([^`]+)` \|", re.MULTILINE)


def typed_keys(node: DictConfig, prefix: str) -> set[str]:
    """Every key of a structured config, descending into typed sections only (a dict value such
    as `callbacks` or `model.activation_args` is one key)."""
    keys = set()
    for key in node:
        child = node._get_node(key)
        if isinstance(child, DictConfig) and dataclasses.is_dataclass(OmegaConf.get_type(child)):
            keys |= typed_keys(child, f"{prefix}{key}.")
        else:
            keys.add(f"{prefix}{key}")
    return keys


def schema_keys() -> set[str]:
    """The keys the schema has, found by OmegaConf (not by cnnexp.docs): the root config less the
    groups whose schema depends on the option, each model kind and data set, each block kind."""
    keys = typed_keys(OmegaConf.structured(schema.Config), "") - {"model", "data"}
    for cls in schema.MODEL_SCHEMAS.values():
        keys |= typed_keys(OmegaConf.structured(cls), "model.")
    for cls in schema.DATA_SCHEMAS.values():
        keys |= typed_keys(OmegaConf.structured(cls), "data.")
    for cls in BLOCKS.values():
        keys |= {f"model.blocks[i].{f.name}" for f in dataclasses.fields(cls)}
    return keys


def test_the_reference_lists_every_schema_key_and_no_other() -> None:
    listed = set(KEY.findall(docs.reference()))
    expected = schema_keys()
    assert expected - listed == set(), "schema keys missing from the reference"
    assert listed - expected == set(), "keys in the reference the schema lacks"
    assert {"trainer.max_epochs", "model.activation", "data.n_samples"} <= listed


def test_the_reference_says_type_default_allowed_values_and_the_schemas_comment() -> None:
    text = docs.reference()
    row = re.search(r"^\| `analysis.top_k` \|.*$", text, re.MULTILINE).group(0)
    assert row == (
        "| `analysis.top_k` | int | `8` | an integer &gt;= 1 and &lt;= 32 "
        "| top patches shown per channel |"
    )
    assert "| `model.activation` | str | `relu` | relu, leaky\\_relu," in text


def test_an_unknown_marker_is_an_error_not_a_silent_gap() -> None:
    with pytest.raises(ValueError, match="cnnexp:nonsense"):
        docs.fill("<!-- cnnexp:nonsense -->", ROOT / "docs")


def test_readme_is_short_and_keeps_the_two_commands_and_its_links() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    assert "make train" in text and "make test" in text
    for link in re.findall(r"\]\((docs/[^)#]+)", text):
        assert (ROOT / link).exists(), link


def test_every_page_of_the_nav_exists() -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    pages = [page for entry in config["nav"] for page in entry.values()]
    assert all((ROOT / "docs" / page).exists() for page in pages)


@pytest.mark.slow
def test_the_site_builds_strict_with_its_generated_parts(tmp_path: Path) -> None:
    """`mkdocs build --strict` (as `make docs` runs it): any warning, e.g. a broken link or a
    missing picture, fails it. The generated parts are in the built pages."""
    site = tmp_path / "site"
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    reference = (site / "reference.html").read_text()
    assert "trainer.max_epochs" in reference and "model.blocks[i].groups" in reference
    layout = (site / "layout.html").read_text()
    for path in sorted((ROOT / "cnnexp").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        module = ".".join(p for p in parts if p != "__init__")
        assert f"<code>{module}</code>" in layout, f"{module} is not named in Inside the code"
    assert not [p for p in site.rglob("*.html") if "<!-- cnnexp:" in p.read_text()]


def test_getting_started_names_every_option_of_every_group() -> None:
    """The group table of docs/index.md is written by hand: a new preset must be added there."""
    text = (ROOT / "docs" / "index.md").read_text()
    options = [
        f"{path.parent.name}/{path.stem}"
        for path in sorted((ROOT / "conf").glob("*/*.yaml"))
        if not path.stem.startswith("_") and path.parent.name != "hydra"
    ]
    assert [o for o in options if f"`{o.split('/')[1]}`" not in text] == []
