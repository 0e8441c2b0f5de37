"""What docs/cli.md shows matches what butter writes."""
from __future__ import annotations

import io
import json
import re
from pathlib import Path

from butter.store import Cache
from butter.store.portable import write_export

ROOT = Path(__file__).resolve().parents[2]


def test_the_export_header_in_docs_cli_md_is_the_one_butter_writes(tmp_path):
    cache = Cache(tmp_path / "db")
    out = io.StringIO()
    write_export(cache.backend, out)
    cache.close()
    header = json.loads(out.getvalue().splitlines()[0])
    documented = re.search(r'\{"type": "butter-export", "version": (\d+), "schema": (\d+)',
                           (ROOT / "docs" / "cli.md").read_text())
    assert documented is not None
    assert (int(documented.group(1)), int(documented.group(2))) == (header["version"], header["schema"])
