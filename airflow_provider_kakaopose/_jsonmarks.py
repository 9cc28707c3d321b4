"""The byte table both raw-JSON scanners use to find JSON's structural characters.

``data.translate(MARKS)`` maps ``"``, ``\\``, ``{``, ``}``, ``[`` and ``]`` to 1 and every other byte to 0, so
``numpy.flatnonzero`` of it gives their positions in one vectorised pass. Used by the job status reader
(:mod:`airflow_provider_kakaopose.hooks._status`) and the tables' fast scanner
(:mod:`airflow_provider_kakaopose.tables.scanner`). Pure and import-light (no numpy here).
"""

from __future__ import annotations

QUOTE, BACKSLASH = 0x22, 0x5C
LBRACE, RBRACE, LBRACKET, RBRACKET = 0x7B, 0x7D, 0x5B, 0x5D
WS = b" \t\r\n"


def _marks_table() -> bytes:
    table = bytearray(256)
    for c in b'"\\{}[]':
        table[c] = 1
    return bytes(table)


#: 256-byte ``bytes.translate`` table: 1 for ``" \\ { } [ ]``, 0 elsewhere.
MARKS = _marks_table()
