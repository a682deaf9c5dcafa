"""Reading data files as text, strictly: every defect is one :class:`ConfigError` naming the file and line.

Data that is silently misread trains a wrong model that looks fine, so a reader here never guesses: a file that is
not UTF-8, holds binary data, or has a row whose field count differs from its header is refused with the place
and the way out, instead of being decoded with replacement characters or having its columns shifted.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path

from .errors import ConfigError

# One field larger than this is refused: real text fields are far smaller, and a quote that is never closed
# otherwise swallows the rest of the file into one field (memory, then a confusing error far from the cause).
MAX_FIELD_CHARS = 1 << 24
csv.field_size_limit(min(sys.maxsize, MAX_FIELD_CHARS))


def describe(value: object) -> str:
    """A short description of a parsed value for an error message, without walking nested structures.

    ``repr`` of a YAML/JSON structure can be huge (or exponential, with YAML aliases), so containers are described
    by their type and size only.
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"the number {value!r}" if len(repr(value)) <= 40 else "a very long number"
    if isinstance(value, str):
        return repr(value) if len(value) <= 60 else repr(value[:57] + "...")
    if isinstance(value, (list, tuple)):
        return f"a list of {len(value)} item(s)"
    if isinstance(value, dict):
        return f"a mapping of {len(value)} key(s)"
    return f"a {type(value).__name__}"


def text_field(value: object, name: str, where: str, *, empty_ok: bool = False) -> str:
    """A text field of one training or evaluation row, checked the same way for every data format: a string (not
    null, a number or a list), not blank unless ``empty_ok``, and real text (JSON may escape half of a UTF-16
    surrogate pair, ``\\ud800``, which the tokenizer cannot encode). ``where`` is the row's ``file:line``."""
    if not isinstance(value, str):
        raise ConfigError(f"{where}: the text field {name!r} is {describe(value)}; it must be a string.")
    if not empty_ok and not value.strip():
        raise ConfigError(f"{where}: the text field {name!r} is empty; every example needs its {name}.")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ConfigError(f"{where}: the text field {name!r} holds {value[e.start]!r}, half of a UTF-16 surrogate "
                          "pair (a broken \\u escape); it is not text.") from None
    return value


def read_text(path: Path, what: str = "data file") -> str:
    """The text of a UTF-8 file (a leading byte-order mark is dropped); anything else is one clear error."""
    if not path.exists():
        raise ConfigError(f"{what} {str(path)!r} does not exist.")
    if not path.is_file():  # a FIFO or a device would block or never end; a folder cannot be read
        raise ConfigError(f"{what} {str(path)!r} is not a regular file (a folder, pipe or device); give a file.")
    data = path.read_bytes()
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise ConfigError(f"{path}: the file is UTF-16 (it starts with a UTF-16 byte-order mark); save it as UTF-8.")
    nul = data.find(b"\x00")
    if nul >= 0:
        line = data.count(b"\n", 0, nul) + 1
        raise ConfigError(f"{path}:{line}: a NUL byte at byte offset {nul}: this is binary data, not "
                          f"{path.suffix or 'text'} text; save the data as UTF-8 text.")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 (byte 0x{data[e.start]:02x} at byte offset {e.start} cannot be "
                          f"decoded: {e.reason}); save the file as UTF-8.") from None


def csv_rows(path: Path, delimiter: str, quoting: int) -> Iterator[tuple[int, list[str]]]:
    """(line number where the row starts, fields) of each non-blank row of a delimited file."""
    text = read_text(path)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting)
    start = 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise ConfigError(f"{path}:{start}: cannot be read as {_kind(delimiter)} ({e}); a quote opened here may "
                              f"never be closed.") from None
        if row:
            yield start, row
        start = reader.line_num + 1


def _kind(delimiter: str) -> str:
    return "CSV" if delimiter == "," else "TSV" if delimiter == "\t" else f"{delimiter!r}-separated text"


def table_records(path: Path, delimiter: str) -> tuple[list[str], list[dict], list[str]]:
    """(header, records, locations) of a CSV/TSV file with a header line; every row must have the header's width."""
    rows = csv_rows(path, delimiter, csv.QUOTE_MINIMAL)
    first = next(rows, None)
    if first is None:
        raise ConfigError(f"{path} is empty; a header line naming the columns is expected.")
    head = [h.strip() for h in first[1]]
    seen: set[str] = set()
    for name in head:
        if name in seen:
            raise ConfigError(f"{path}:{first[0]}: column {name!r} appears more than once in the header "
                              f"({', '.join(head)}); column names must be unique.")
        seen.add(name)
    records, where = [], []
    for n, row in rows:
        if len(row) != len(head):
            raise ConfigError(_width_error(path, n, row, head, delimiter))
        records.append(dict(zip(head, row, strict=True)))
        where.append(f"{path}:{n}")
    return head, records, where


def _width_error(path: Path, n: int, row: list[str], head: list[str], delimiter: str) -> str:
    sep = "a comma" if delimiter == "," else "a tab" if delimiter == "\t" else repr(delimiter)
    if len(row) < len(head) and any("\n" in f or "\r" in f for f in row):
        hint = "a quote opened on this line is never closed (a field ran on over the next lines)"
    elif len(row) > len(head):
        hint = f"a text field that holds {sep} must be quoted (\"like{delimiter} this\")"
    else:
        hint = f"{sep} or a field is missing"
    return (f"{path}:{n}: this row has {len(row)} fields but the header has {len(head)} "
            f"({', '.join(head)}); {hint}.")


class DuplicateKey(Exception):
    pass


def unique_keys(pairs: list[tuple[str, object]]) -> dict:
    """A JSON object's pairs as a dict; a repeated key would otherwise keep its last value silently."""
    out: dict = {}
    for k, v in pairs:
        if k in out:
            raise DuplicateKey(k)
        out[k] = v
    return out


def jsonl_records(path: Path) -> tuple[list[str], list[dict], list[str]]:
    """(columns, records, locations) of a JSON Lines file: one JSON object per non-blank line."""
    text = read_text(path)
    records, where = [], []
    for n, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line, object_pairs_hook=unique_keys)
        except DuplicateKey as e:
            raise ConfigError(f"{path}:{n}: the key {describe(e.args[0])} appears more than once in this object; "
                              "keys must be unique.") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}:{n} is not a JSON object ({e.msg}); JSONL wants one object per line.") from None
        except (ValueError, RecursionError) as e:  # e.g. an integer of more than 4,300 digits; nesting too deep
            raise ConfigError(f"{path}:{n} cannot be read as JSON ({str(e)[:80]}); JSONL wants one object per "
                              "line.") from None
        if not isinstance(obj, dict):
            hint = (" (a .json file here is JSON Lines, not one array of objects)"
                    if isinstance(obj, list) and path.suffix.lower() == ".json" else "")
            raise ConfigError(f"{path}:{n} is {describe(obj)}, not a JSON object; JSONL wants one object per "
                              f"line{hint}.")
        records.append(obj)
        where.append(f"{path}:{n}")
    columns = sorted({str(k) for r in records for k in r})
    return columns, records, where
