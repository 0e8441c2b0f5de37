"""butter: a behaviour cache for LLM agents (a mitmproxy addon, a store, a CLI).

Installed, `butter.addon`, `butter.store` and `butter.cli` are folders of this
package. In a checkout they are the top-level folders `addon/`, `store/` and
`cli/` beside this one, the layout the repository is read in: this package's
path then takes in the checkout's root, so the same imports work in both,
and installing butter adds no module named `addon`, `store` or `cli` to an
agent's environment.
"""
from __future__ import annotations

import os

_here = os.path.dirname(os.path.abspath(__file__))
_checkout = os.path.dirname(_here)
if not os.path.isdir(os.path.join(_here, "store")) and os.path.isfile(os.path.join(_checkout, "store", "__init__.py")):
    __path__.append(_checkout)  # noqa: F821 - the package's own search path
