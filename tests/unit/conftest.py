"""Fixtures shared by the unit tests that drive the addon through mitmproxy's test context."""
from __future__ import annotations

import pytest
from mitmproxy.test import taddons

from butter.addon.cache_addon import Butter


@pytest.fixture
def butter(tmp_path):
    """The addon on a fresh database in a temporary folder, with its test context."""
    addon = Butter()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, butter_db=str(tmp_path / "db"))
        yield addon, tctx
    addon.done()
