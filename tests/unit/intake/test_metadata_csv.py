"""molescope.intake.metadata_csv: one record per physical line, so a malformed line costs that line only,
and the rows read are the lines the file holds (on hand-written CSVs and the real HAM10000 metadata)."""

from __future__ import annotations

import pytest

from molescope.core.errors import InputError
from molescope.intake.metadata_csv import LINE_BREAK, UNCLOSED_QUOTE, physical_lines, read_csv
from tests.conftest import HAM10000, require

HEADER = b"lesion_id,image_id,dx,dx_type,age,sex,localization\n"
#: Positions in a row tuple after the 7 header columns: row, line, field count, undecodable column, malformed.
ROW, LINE, FIELDS, UNDECODABLE, MALFORMED = range(7, 12)


def line(n: int, localization: str = "back") -> bytes:
    return f"HAM_{n:07d},ISIC_{n:07d},nv,histo,40.0,male,{localization}\n".encode()


def test_read_csv_keeps_row_line_field_count_and_undecodable_column():
    data = (
        b"\xef\xbb\xbfLesion_ID,image_id,dx,dx_type,age,sex,localization\r\n"
        b'HAM_0000001,ISIC_0000001,nv,histo,40,male,"lower\r\nextremity"\r\n'
        b"\r\n"
        b"HAM_0000002,ISIC_0000002,nv,histo,40,male,back,extra\r\n"
        b"HAM_0000003,ISIC_0000003,nv\r\n"
        b"HAM_0000004,ISIC_0000004,nv,histo,40,m\xe4nnlich,back\r\n"
    )
    header, rows = read_csv(data, "m.csv")
    assert header == ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"]
    # A field holding a line break is no HAM metadata: both of its lines are rows of their own, the first
    # malformed (its quote never closes on it), the second a one-field row.
    assert rows[0][ROW:MALFORMED] == (1, 2, 7, None) and rows[0][6] == "lower"
    assert rows[0][MALFORMED].startswith(
        f'{UNCLOSED_QUOTE}: HAM_0000001,ISIC_0000001,nv,histo,40,male,"lower'
    )
    assert rows[1][ROW:] == (2, 3, 1, None, None) and rows[1][0] == 'extremity"'
    assert rows[2][ROW:] == (3, 5, 8, None, None) and rows[2][6] == "back"
    assert rows[3][ROW:] == (4, 6, 3, None, None) and rows[3][3:7] == (None, None, None, None)
    assert rows[4][ROW:] == (5, 7, 7, "sex", None) and rows[4][5] == "m\ufffdnnlich"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "is empty"),
        (b"\n\n", "is empty"),
        (b"lesion_id,image_id\n", "lacks columns"),
        (
            b'lesion_id,"image_id,dx,dx_type,age,sex,localization\n' + line(1),
            r"header \(line 1\) is malformed",
        ),
    ],
)
def test_read_csv_refuses_what_is_no_metadata(data, message):
    with pytest.raises(InputError, match=message):
        read_csv(data, "m.csv")


def test_an_unclosed_quote_costs_its_own_line_only():
    """The reported case: a 30-row batch whose first row opens a quote and never closes it."""
    bad = b'HAM_0002431,ISIC_0032657,nv,histo,25.0,male,"lower extremity\n'
    _, rows = read_csv(HEADER + bad + b"".join(line(n) for n in range(2, 31)), "m.csv")
    assert len(rows) == 30
    assert [r[LINE] for r in rows] == list(range(2, 32))
    assert rows[0][1] == "ISIC_0032657" and rows[0][MALFORMED].startswith(UNCLOSED_QUOTE)
    assert all(r[MALFORMED] is None and r[6] == "back" and r[FIELDS] == 7 for r in rows[1:])
    assert [r[1] for r in rows[1:]] == [f"ISIC_{n:07d}" for n in range(2, 31)]


@pytest.mark.parametrize(
    ("text", "fields", "problem"),
    [
        ('"lower extremity, left"', 7, None),  # a quoted comma: one field, as before
        ('"lower ""extremity"""', 7, None),  # doubled quotes inside a quoted field
        ('"lower" extremity', 7, None),  # text after a closing quote: lenient, as before
        ('lower "extremity', 7, None),  # a quote inside an unquoted field is text
        ('"lower extremity""', 7, UNCLOSED_QUOTE),  # the last quote is an escaped one: still open
        ("lower\rextremity", 7, LINE_BREAK),  # a bare CR inside a line of an LF file
    ],
)
def test_quotes_are_read_as_before_unless_a_record_leaves_its_line(text, fields, problem):
    data = HEADER + b"HAM_0000001,ISIC_0000001,nv,histo,40.0,male," + text.encode() + b"\n" + line(2)
    _, rows = read_csv(data, "m.csv")
    assert len(rows) == 2 and rows[0][1] == "ISIC_0000001"
    assert rows[0][FIELDS] == fields
    assert (rows[0][MALFORMED] or "").partition(":")[0] == (problem or "")
    assert rows[1][MALFORMED] is None and rows[1][6] == "back"


def test_lines_are_split_as_wc_splits_them():
    assert physical_lines("a\r\nb\nc\r\n") == ["a", "b", "c", ""]
    assert physical_lines("a\rb\rc") == ["a", "b", "c"]  # classic Mac line ends: no LF anywhere
    assert physical_lines("a\rb\nc") == ["a\rb", "c"]  # a CR in an LF file is inside a line


def test_a_line_of_commas_is_a_row_and_whitespace_lines_are_not():
    _, rows = read_csv(HEADER + line(1) + b",,,,,,\n  \n\t\n" + line(2), "m.csv")
    assert [r[LINE] for r in rows] == [2, 3, 6]
    assert rows[1][:7] == ("", "", "", "", "", "", "")


@pytest.fixture(scope="module")
def real_csv() -> bytes:
    return require(HAM10000 / "HAM10000_metadata.csv").read_bytes()


def data_lines(data: bytes) -> int:
    """What `wc -l` says, less the header and blank lines."""
    return sum(1 for text in data.decode().split("\n")[1:] if text.strip())


def test_real_metadata_rows_are_its_lines(real_csv):
    _, rows = read_csv(real_csv, "HAM10000_metadata.csv")
    assert len(rows) == data_lines(real_csv) == 10015
    assert not any(r[MALFORMED] for r in rows)


@pytest.mark.parametrize("at_line", [2, 3, 5000])
def test_one_unclosed_quote_in_the_real_metadata_costs_one_row(real_csv, at_line):
    lines = real_csv.decode().split("\n")
    fields = lines[at_line - 1].split(",")
    fields[-1] = '"' + fields[-1]  # the localization opens a quote it never closes
    lines[at_line - 1] = ",".join(fields)
    broken = "\n".join(lines).encode()
    _, before = read_csv(real_csv, "m.csv")
    _, after = read_csv(broken, "m.csv")
    assert len(after) == len(before) == data_lines(broken)
    changed = [(b, a) for b, a in zip(before, after, strict=True) if b != a]
    assert len(changed) == 1
    was, now = changed[0]
    assert now[LINE] == at_line and now[MALFORMED].startswith(UNCLOSED_QUOTE)
    assert now[:6] == was[:6]  # image_id and the rest up to the broken field are still read
