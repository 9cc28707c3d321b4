"""Integer codes for the values of a string column, shared by tracking and the COCO rebuild.

Import-light: numpy and pyarrow are imported when :func:`value_codes` runs.
"""

from __future__ import annotations

from typing import Any


def value_codes(column: Any, known: dict[Any, int], *, code_nulls: bool = False) -> Any:
    """An int64 code per row of a (dictionary or plain) string ``pyarrow.ChunkedArray``: equal values get
    equal codes, in the order ``known`` (value → code, extended here) first saw them.

    A null row is -1, or with ``code_nulls`` the code of ``None`` in ``known`` (added when first met). The
    work per chunk is one small remap, a constant fill for the usual one-value chunk.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    pieces = []
    for chunk in column.chunks:
        if not pa.types.is_dictionary(chunk.type):
            chunk = pc.dictionary_encode(chunk)
        values = chunk.dictionary.to_pylist()
        remap = np.array([known.setdefault(v, len(known)) for v in values] + [-1], dtype=np.int64)
        if len(values) == 1 and not chunk.null_count:  # the usual chunk: one value
            pieces.append(np.full(len(chunk), remap[0], dtype=np.int64))
            continue
        if code_nulls and chunk.null_count:
            remap[-1] = known.setdefault(None, len(known))
        indices = np.asarray(chunk.indices.fill_null(-1).to_numpy(zero_copy_only=False), dtype=np.int64)
        pieces.append(remap[indices])  # -1 (null) picks the last entry
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)
