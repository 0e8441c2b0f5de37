"""butter: a behaviour cache for LLM agents, as a mitmproxy addon.

    mitmdump -s addon/butter.py [--set butter_mode=auto|record|replay|off]

mitmdump loads this file as a script; the addon itself lives in
`addon/cache_addon.py`, wire formats in `addon/formats/`, the tree in `store/`.
"""
import os
import sys

# mitmdump puts this file's folder first on sys.path (where a bare `import
# butter` would find this very script) and the package's home not at all. Put
# the folder that holds the `butter` package first: the checkout's root, or
# site-packages when butter is installed.
_HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_HOME = os.path.dirname(_HERE) if os.path.isfile(os.path.join(_HERE, "__init__.py")) else _HERE
if sys.path[:1] != [_HOME]:
    sys.path.insert(0, _HOME)

from butter.addon.cache_addon import Butter  # noqa: E402

addons = [Butter()]
