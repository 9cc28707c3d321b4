"""The README's minimal Airflow DAG, exactly as written there (its first ```python block), for tests/test_readme.py.

The block is compiled under this file's name, so the DAG's file is this one (the DAG processor and
``dag.test()`` can parse it again), and its code is the README's, character for character.
"""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"
CODE = re.search(r"^```python\n(.*?)^```", README.read_text(), re.S | re.M).group(1)

exec(compile(CODE, __file__, "exec"))
