"""Reading a researcher's own files: records with their file and line, seeded splits, limits.

The file-backed task families (instruction, text, text_classification) share this, so every bad input
(unknown format, empty file, missing column, malformed line) fails the same way: a :class:`DataError` that
names the file and the line. The ``csv``/``json`` modules parse; this module only adds the provenance.
"""

from __future__ import annotations

import csv
import glob
import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from farlab.errors import DataError
from farlab.registry import unknown_choice_message

csv.field_size_limit(sys.maxsize)

FORMATS = ("jsonl", "json", "csv", "tsv", "txt")
_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv", ".txt": "txt"}


@dataclass(frozen=True)
class Record:
    """One example as read, with where it came from (``file:line`` in every error about it)."""

    data: dict[str, Any]
    source: str
    line: int

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"

    def get(self, column: str, required: bool = True) -> Any:
        """The column's value; a missing (or, when required, empty) column is a DataError naming the line."""
        value = self.data.get(column)
        if required and (value is None or (isinstance(value, str) and not value.strip())):
            state = "has no column" if column not in self.data else "has an empty"
            raise DataError(f"{self.where}: record {state} {column!r} (columns: {sorted(self.data)}); "
                            "map your column names in the task config (task.columns / task.*_column)")
        return value


def file_format(path: str | Path, fmt: str = "auto") -> str:
    """``fmt``, or the format the file's suffix names; an unknown one lists the valid choices."""
    if fmt != "auto":
        if fmt not in FORMATS:
            raise DataError(unknown_choice_message("task.format", fmt, FORMATS))
        return fmt
    suffix = Path(path).suffix.lower()
    if suffix not in _SUFFIXES:
        raise DataError(f"{path}: unknown file format {suffix or '(no suffix)'!r}; valid suffixes: "
                        f"{', '.join(_SUFFIXES)} (or set task.file_format to one of {', '.join(FORMATS)})")
    return _SUFFIXES[suffix]


def read_records(path: str | Path, fmt: str = "auto") -> list[Record]:
    """Every record of one file: a JSON object per line (jsonl), a JSON list, CSV/TSV rows under a header,
    or a .txt file as one record ``{"text": <whole file>}``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    kind = file_format(path, fmt)
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise DataError(f"{path}: empty file")
    records = _PARSERS[kind](text, str(path))
    if not records:
        raise DataError(f"{path}: no records")
    return records


def _jsonl(text: str, source: str) -> list[Record]:
    records = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{source}:{line_no}: not valid JSON ({err.msg}); jsonl needs one object per line") from err
        records.append(Record(_object(value, source, line_no), source, line_no))
    return records


def _json(text: str, source: str) -> list[Record]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{source}:{err.lineno}: not valid JSON ({err.msg})") from err
    if isinstance(value, dict) and len(value) == 1 and isinstance(next(iter(value.values())), list):
        value = next(iter(value.values()))  # {"data": [...]}
    if not isinstance(value, list):
        raise DataError(f"{source}: a .json file must hold a list of records (or use .jsonl, one per line)")
    # json keeps no line numbers: the record's 1-based index stands in for it
    return [Record(_object(v, source, i), source, i) for i, v in enumerate(value, start=1)]


def _object(value: Any, source: str, line: int) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise DataError(f"{source}:{line}: expected a JSON object, got {type(value).__name__}")
    return value


def _delimited(delimiter: str) -> Any:
    def parse(text: str, source: str) -> list[Record]:
        reader = csv.reader(text.splitlines(), delimiter=delimiter)
        header = next(reader)
        records = []
        for line_no, fields in enumerate(reader, start=2):
            if not fields or not any(f.strip() for f in fields):
                continue
            if len(fields) != len(header):
                raise DataError(f"{source}:{line_no}: {len(fields)} fields, the header has {len(header)} "
                                f"({header}); quote fields that contain {delimiter!r}")
            records.append(Record(dict(zip(header, fields, strict=True)), source, line_no))
        return records

    return parse


def _txt(text: str, source: str) -> list[Record]:
    return [Record({"text": text}, source, 1)]


_PARSERS = {"jsonl": _jsonl, "json": _json, "csv": _delimited(","), "tsv": _delimited("\t"), "txt": _txt}


def expand(patterns: list[str]) -> list[Path]:
    """Files named by paths or globs, sorted within a glob; a pattern matching nothing is an error."""
    files: list[Path] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not matches or not Path(matches[0]).exists():
            raise DataError(f"{pattern}: no such file")
        files += [Path(m) for m in matches]
    return files


def read_many(patterns: list[str], fmt: str = "auto") -> list[Record]:
    return [record for path in expand(patterns) for record in read_records(path, fmt)]


def hub_records(hub_name: str, hub_config: str | None, split: str) -> list[Record]:
    """Online machines only: a datasets hub split as records (the row index stands in for the line)."""
    import datasets

    ds = datasets.load_dataset(hub_name, hub_config, split=split)
    return [Record(dict(row), f"{hub_name}[{split}]", i) for i, row in enumerate(ds, start=1)]


def check_sources(train_files: list[str], hub_name: str | None, fmt: str = "auto") -> None:
    """Cheap checks before any model loads: files exist and have a known format."""
    if not train_files and hub_name is None:
        raise DataError("set task.train_file (a local file) or task.hub_name (a datasets name, online machines)")
    for path in expand(train_files):
        file_format(path, fmt)


@dataclass
class Splits:
    train: list[Any]
    eval: list[Any]
    eval_name: str


def split_or_load(train: list[Any], eval_items: list[Any] | None, fraction: float, seed: int,
                  eval_name: str = "eval_file") -> Splits:
    """The given eval items, or a seeded ``fraction`` of train held out (the same seed gives the same split)."""
    if eval_items is not None:
        return Splits(train, eval_items, eval_name)
    if not 0 < fraction < 1:
        raise DataError(f"task.validation_fraction={fraction} must be in (0, 1)")
    if len(train) < 2:
        raise DataError(f"{len(train)} training record(s): too few to hold out an eval split; give task.eval_file")
    order = list(range(len(train)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, round(len(train) * fraction))
    held = set(order[:n_eval])
    return Splits([x for i, x in enumerate(train) if i not in held], [train[i] for i in sorted(held)],
                  f"train[{fraction:.0%} seeded split]")


def seeded_limit(items: list[Any], limit: int | None, seed: int) -> list[Any]:
    """At most ``limit`` items, a seeded random subset kept in file order."""
    if limit is None or limit >= len(items):
        return items
    keep = sorted(random.Random(seed).sample(range(len(items)), limit))
    return [items[i] for i in keep]
