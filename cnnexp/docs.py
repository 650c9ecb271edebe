"""The docs site's generated parts and the mkdocs hook that puts them in (mkdocs.yml `hooks:`).

- the configuration reference: every key of the typed schema (cnnexp/schema.py) and of the block
  kinds (cnnexp/models/blocks.py) with its type, default, allowed values (the checker's own words,
  cnnexp/limits.py) and the comment the schema gives it;
- the code layout: one line per module of cnnexp/, its docstring's first line;
- the study tables `make studies` wrote (docs/studies/<study>.md), or how to make a missing one.

A page asks for a part with a marker line: `<!-- cnnexp:reference -->`, `<!-- cnnexp:layout -->`,
`<!-- cnnexp:blocks -->`, `<!-- cnnexp:study NAME -->`.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import functools
import html
import inspect
import io
import re
import textwrap
import tokenize
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import MISSING

from cnnexp import schema, studies
from cnnexp.limits import allowed_text
from cnnexp.models.graph import BLOCKS

PACKAGE = Path(__file__).resolve().parent
MARKER = re.compile(r"^<!-- cnnexp:(\w+)\s*(\w*) -->$", re.MULTILINE)
TRAINER_DOCS = "https://lightning.ai/docs/pytorch/stable/common/trainer.html#trainer-flags"
GROUPS = {"model": schema.MODEL_SCHEMAS, "data": schema.DATA_SCHEMAS}  # keys by chosen option


# ---- what the schema's source says of each field ----
@functools.cache
def _comments(cls: type) -> dict[str, str]:
    """The comment of each field `cls` itself defines: at the end of its line(s), or the comment
    lines right above it (not the class's own note right under its `class` line)."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):  # made by make_dataclass: no source
        return {}
    notes = {
        tok.start[0]: tok.string.lstrip("#").strip()
        for tok in tokenize.generate_tokens(io.StringIO(source).readline)
        if tok.type == tokenize.COMMENT
    }
    [body] = ast.parse(source).body
    found, previous_end = {}, body.lineno
    for node in body.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            lines = range(node.lineno, node.end_lineno + 1)
            trailing = [notes[n] for n in lines if n in notes]
            above, line = [], node.lineno - 1
            while line in notes and line > previous_end + (previous_end == body.lineno):
                above.insert(0, notes[line])
                line -= 1
            if line == body.lineno:  # the comment block is the class's note, not the field's
                above = []
            found[node.target.id] = " ".join(trailing or above)
        previous_end = node.end_lineno
    return found


def class_note(cls: type) -> str:
    """The comment on a schema class's `class` line: what it is."""
    try:
        source = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):
        return ""
    line = next(ln for ln in source if ln.lstrip().startswith("class "))
    return line.partition("#")[2].strip()


def help_text(cls: type, name: str) -> str:
    """The comment of field `name`, from the class in `cls`'s ancestry that defines it last."""
    for klass in cls.__mro__:
        comments = _comments(klass) if dataclasses.is_dataclass(klass) else {}
        if name in comments:
            return comments[name]
    return ""


# ---- the reference ----
@dataclasses.dataclass(frozen=True)
class Row:
    key: str
    type: str
    default: str
    allowed: str
    help: str


def _type(tp: Any) -> str:
    text = tp if isinstance(tp, str) else getattr(tp, "__name__", None) or str(tp)
    text = re.sub(r"\btyping\.", "", str(text)).replace("NoneType", "None")
    text = text.replace("Any", "any").replace(" | None", " or null")
    return "section" if dataclasses.is_dataclass(tp) else text


def _value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return value or "''"
    return str(value).replace("'", "").replace("None", "null")


def _default(field: dataclasses.Field) -> str:
    if field.default_factory is not dataclasses.MISSING:
        return _value(field.default_factory())
    if field.default is dataclasses.MISSING or field.default == MISSING:
        return "required"
    return _value(field.default)


def rows(cls: type, prefix: str, skip: frozenset[str] = frozenset()) -> Iterator[Row]:
    """A row per key of dataclass `cls` under `prefix`, nested sections expanded in place."""
    hints = typing.get_type_hints(cls)  # blocks.py's annotations are strings
    for field in dataclasses.fields(cls):
        key = f"{prefix}{field.name}"
        if field.name in skip:
            continue
        field = copy.copy(field)
        field.type = tp = hints.get(field.name, field.type)  # allowed_text reads the type
        if dataclasses.is_dataclass(tp):
            yield from rows(tp, f"{key}.")
            continue
        yield Row(key, _type(tp), _default(field), allowed_text(field), help_text(cls, field.name))


def _cell(text: str) -> str:
    """Text for a table cell: no line break, `|` escaped."""
    return text.replace("|", r"\|").replace("\n", " ")


def _prose(text: str) -> str:
    """A source comment as Markdown text: `<`, `>`, `_` and `*` shown as they are (outside
    backquoted code)."""
    pieces = re.split(r"(`[^`]*`)", text)
    return "".join(
        p if p.startswith("`") else re.sub(r"([_*])", r"\\\1", html.escape(p, quote=False))
        for p in pieces
    )


def table(found: list[Row]) -> str:
    lines = ["| key | type | default | allowed | what |", "|---|---|---|---|---|"]
    lines += [
        f"| `{r.key}` | {_cell(r.type)} | `{_cell(r.default)}` | {_cell(_prose(r.allowed))} | "
        f"{_cell(_prose(r.help))} |"
        for r in found
    ]
    return "\n".join(lines)


def _section(title: str, text: str, found: list[Row]) -> str:
    return f"## {title}\n\n{text}\n\n{table(found)}" if found else ""


def reference() -> str:
    """Every config key the schema has, section by section, as Markdown tables."""
    top = [f for f in dataclasses.fields(schema.Config)]
    plain = [f.name for f in top if not dataclasses.is_dataclass(f.type) and f.name not in GROUPS]
    nested = [f for f in top if dataclasses.is_dataclass(f.type)]
    parts = [
        _section(
            "Top level",
            "Keys of `conf/config.yaml` itself; `optimizer`, `scheduler` and `callbacks` are "
            "`_target_` configs filled by their groups (`optimizer=adamw`), checked against the "
            "named class's signature.",
            [r for r in rows(schema.Config, "") if r.key in plain],
        )
    ]
    for f in nested:
        cls = f.type
        text = (
            "Lightning's own `Trainer` arguments, read from its source, every one a key "
            f"(no `+`); their meaning: [Lightning's Trainer flags]({TRAINER_DOCS})."
            if f.name == "trainer"
            else (_prose(class_note(cls)) or f"The `{f.name}` group.")
        )
        parts.append(_section(f"`{f.name}`", text, list(rows(cls, f"{f.name}."))))
    parts.append(model_reference())
    parts.append(data_reference())
    parts.append(block_reference())
    return "\n\n".join(p for p in parts if p) + "\n"


def model_reference() -> str:
    parts = []
    for kind, cls in schema.MODEL_SCHEMAS.items():
        text = f"`model.kind: {kind}`: {_prose(class_note(cls))}."
        parts.append(_section(f"`model` ({kind})", text, list(rows(cls, "model."))))
    return "\n\n".join(parts)


def data_reference() -> str:
    """The keys every data set shares, then per data set the keys it adds or sets otherwise."""
    shared = {f.name: f for f in dataclasses.fields(schema.DataConf)}
    parts = [
        _section(
            "`data` (every data set)",
            "Keys all data sets share; `data.name` is the option chosen (`data=digits`).",
            list(rows(schema.DataConf, "data.")),
        )
    ]
    for name, cls in schema.DATA_SCHEMAS.items():
        own = {
            f.name
            for f in dataclasses.fields(cls)
            if f.name != "name"
            and (
                f.name not in shared
                or _default(f) != _default(shared[f.name])
                or f.metadata != shared[f.name].metadata
            )
        }
        kept = frozenset(f.name for f in dataclasses.fields(cls)) - own
        note = _prose(class_note(cls)) or f"`data={name}`."
        parts.append(_section(f"`data={name}`", note, list(rows(cls, "data.", kept))))
    return "\n\n".join(p for p in parts if p)


def block_reference() -> str:
    """The keys of each block kind: an entry of `model.blocks` (errors name it by its path)."""
    parts = []
    for kind, cls in BLOCKS.items():
        note = class_note(cls).strip()
        text = f"`{{{kind}: ...}}`" + (f": {note}" if note and not note.startswith("{") else "")
        if note.startswith("{"):
            text = f"e.g. `{note}`"
        parts.append(_section(f"Block `{kind}`", text, list(rows(cls, "model.blocks[i]."))))
    return "\n\n".join(parts)


# ---- the layout ----
def modules() -> list[tuple[str, str]]:
    """(module, its docstring's first line) for every module of the package."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(p for p in parts if p != "__init__")
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        found.append((name, doc.strip().splitlines()[0] if doc.strip() else ""))
    return found


def layout() -> str:
    lines = ["| module | what it is |", "|---|---|"]
    lines += [f"| `{name}` | {_cell(doc)} |" for name, doc in modules()]
    return "\n".join(lines)


# ---- the study tables ----
def study(name: str, docs_dir: Path) -> str:
    """The study's question (its YAML's comment), its commands, and a link to the table `make
    studies` wrote for it (or how to write it)."""
    small = " ".join(studies.BUDGETS.get(name, studies.SMALL))
    lines = [
        f"*{_prose(studies.question(name))}*",
        "",
        "```bash",
        f"python -m cnnexp -m +experiment={name} {small}   # small budget",
        f"python -m cnnexp -m +experiment={name}   # the study's own budget",
        f"python -m cnnexp.studies {name}   # small budget, and its table for these docs",
        "```",
        "",
    ]
    page = docs_dir / "studies" / f"{name}.md"
    if page.exists():
        dated = [ln for ln in page.read_text().splitlines() if ln.startswith("- **date**")]
        when = dated[0].removeprefix("- **date**: ").split(";")[0] if dated else "undated"
        lines.append(f"**Table**: [{name}](studies/{name}.md), made {when}.")
    else:
        lines.append(f"**Table**: none yet; `python -m cnnexp.studies {name}` writes it.")
    return "\n".join(lines)


def blocks() -> str:
    """One row per block kind: its keys, each with its default (required ones bare)."""
    lines = ["| block | keys (defaults) | what |", "|---|---|---|"]
    for kind, cls in BLOCKS.items():
        keys = []
        for field in dataclasses.fields(cls):
            default = _default(field)
            keys.append(f"`{field.name}`" + ("" if default == "required" else f" ({default})"))
        lines.append(f"| `{kind}` | {', '.join(keys)} | {_cell(_prose(class_note(cls)))} |")
    return "\n".join(lines)


# ---- the mkdocs hook ----
def fill(markdown: str, docs_dir: Path) -> str:
    """`markdown` with every marker line replaced by the part it asks for."""

    def part(match: re.Match) -> str:
        what, arg = match.groups()
        if what == "reference":
            return reference()
        if what == "layout":
            return layout()
        if what == "blocks":
            return blocks()
        if what == "study" and arg in studies.studies():
            return study(arg, docs_dir)
        raise ValueError(f"unknown docs marker {match.group(0)!r}")

    return MARKER.sub(part, markdown)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """mkdocs hook: fill the markers of each page."""
    return fill(markdown, Path(config["docs_dir"]))
