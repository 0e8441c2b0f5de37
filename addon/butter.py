"""butter: a behaviour cache for LLM agents, as a mitmproxy addon.

    mitmdump -s addon/butter.py [--set butter_mode=auto|record|replay|off]

mitmdump loads this file as a script; the addon itself lives in
`addon/cache_addon.py`, wire formats in `addon/formats/`, the tree in `store/`.
"""
import os
import sys

# mitmdump puts this file's folder on sys.path only while importing it, and
# the project root not at all; make `store` and `addon` importable either way.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from addon.cache_addon import Butter  # noqa: E402

addons = [Butter()]
