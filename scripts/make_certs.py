"""Create mitmproxy's CA in certs/ (if missing) and a client trust bundle.

`certs/bundle.pem` is the system's (or certifi's) CAs plus mitmproxy's CA, so
a client pointed at it trusts butter *and* keeps trusting everything else it
reaches through the proxy. Run by `make proxy`; safe to run again. (`butter
proxy` and `butter run` do the same in the per-user config dir instead:
cli/proxy_process.py.)
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from butter.cli.proxy_process import ensure_trust  # noqa: E402

CERTS = ROOT / "certs"


def main() -> int:
    trust = ensure_trust(CERTS, bundle_name="bundle.pem")
    print(f"butter: CA {trust.ca_cert}; trust bundle {trust.bundle}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
