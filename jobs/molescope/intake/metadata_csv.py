"""Reading a metadata CSV's bytes into rows, one physical line at a time, so that no line can swallow another.

The CSV is parsed on the driver with Python's `csv` module (a batch's metadata is small: 10,015 rows, ~600 KB
for all of HAM10000) because Spark's CSV reader hides the faults that matter: it pads short rows with nulls
and drops the fields of long ones (an unquoted comma), and it replaces bytes that are not UTF-8.

One record per line. HAM-style metadata has no field that holds a line break, so every non-blank line after
the header is one data row, and `rows_in` counts what the file holds (`wc -l` less the header and blank
lines). A line whose record does not end on it (a quote opened and never closed, a bare carriage return)
is a `malformed_row`; reading goes on at the next line. A whole-file CSV reader would instead read every
following line into the open quoted field: one stray quote near the top would lose the batch.

Each row keeps its number, its line, its field count, the first column holding bytes that are not UTF-8
and what made it malformed, and the rules (`molescope.intake.metadata`) quarantine such rows
(`malformed_row`, `wrong_field_count`, `undecodable_row`) instead of curating them.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass

from molescope.core.constants import METADATA_COLUMNS
from molescope.core.errors import InputError

#: Columns `read_csv` adds: data row number, line of the row, its field count, the first column whose bytes
#: are not UTF-8 (null when all are) and why the line holds no whole record (null when it does).
ROW, LINE, FIELDS, UNDECODABLE, MALFORMED = "row", "_line", "_fields", "_undecodable", "_malformed"
#: Python decodes bytes that are not UTF-8 to these lone surrogates (errors="surrogateescape").
_SURROGATES = range(0xDC80, 0xDD00)
#: How much of a malformed line its quarantine detail quotes.
QUOTED_CHARS = 80
UNCLOSED_QUOTE = "a quoted field never closes on its line"
LINE_BREAK = "a carriage return inside the record"


@dataclass(frozen=True)
class Line:
    """One physical line's record: its fields (None when unreadable) and what broke it (None: nothing)."""

    number: int
    fields: list[str] | None
    problem: str | None


def _undecodable(value: str) -> bool:
    return any(ord(c) in _SURROGATES for c in value)


def _clean(value: str) -> str:
    """`value` with undecodable bytes as U+FFFD (Spark strings must be valid UTF-8)."""
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _parses(line: str, strict: bool) -> list[str] | None:
    try:
        return next(csv.reader([line], strict=strict))
    except csv.Error:
        return None


def parse_line(number: int, line: str) -> Line:
    """The record of one physical line. Lenient as before (`"a"b` reads as `ab`), but a quote left open
    at the end of the line, which a file reader would close lines later, or a bare carriage return makes
    the line malformed; its fields are still read as well as they can be, so the row's image_id claims its
    image (which is then quarantined with the row, not as an orphan)."""
    fields = _parses(line, strict=False)
    if fields is None:  # a bare CR ends a record for the csv module: read on as if it were a space
        return Line(number, _parses(line.replace("\r", " "), strict=False), LINE_BREAK)
    if _parses(line, strict=True) is None and _parses(line + '"', strict=True) is not None:
        return Line(number, fields, UNCLOSED_QUOTE)
    return Line(number, fields, None)


def physical_lines(text: str) -> list[str]:
    """The file's lines as `wc -l` would split them (LF or CRLF; CR alone only in a file without LF)."""
    if "\n" not in text:
        return text.split("\r")
    return [line.removesuffix("\r") for line in text.split("\n")]


def _row(line: Line, text: str, header: list[str], index: int) -> tuple:
    fields = line.fields or []
    bad = next(
        (header[i] if i < len(header) else f"field {i + 1}" for i, f in enumerate(fields) if _undecodable(f)),
        None,
    )
    values = [_clean(f) for f in fields[: len(header)]] + [None] * (len(header) - len(fields))
    malformed = f"{line.problem}: {_clean(text[:QUOTED_CHARS])}" if line.problem else None
    return (*values, index, line.number, len(fields), bad, malformed)


def read_csv(data: bytes, source: str) -> tuple[list[str], list[tuple]]:
    """(header names, one tuple per data row) of a metadata CSV's bytes.

    Header names are trimmed and lower-cased (a UTF-8 BOM is dropped). Each row tuple holds the header's
    columns (a short row: None for the missing ones; a long row: the extra fields dropped), then the data
    row number (1-based), its line in the file, its field count, the first column with bytes that are not
    UTF-8 (or None) and, for a malformed line, why and its first characters (or None). Blank lines
    (whitespace only) are no rows; every other line is one, a line of commas only included. InputError for
    an empty file, a malformed header or a missing column.
    """
    if not data.strip():
        raise InputError(f"metadata CSV {source} is empty")
    text = data.removeprefix(b"\xef\xbb\xbf").decode("utf-8", "surrogateescape")
    lines = [(number, line) for number, line in enumerate(physical_lines(text), start=1) if line.strip()]
    header_line = parse_line(*lines[0])
    if header_line.problem or header_line.fields is None:
        where = f"metadata CSV {source}: its header (line {lines[0][0]})"
        raise InputError(f"{where} is malformed: {header_line.problem}")
    header = [_clean(name).strip().lower() for name in header_line.fields]
    missing = [c for c in METADATA_COLUMNS if c not in header]
    if missing:
        raise InputError(f"metadata CSV {source} lacks columns {missing}; its header is {header}")
    rows = []
    for number, text_line in lines[1:]:
        rows.append(_row(parse_line(number, text_line), text_line, header, len(rows) + 1))
    return header, rows
