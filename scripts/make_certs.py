"""Create mitmproxy's CA in certs/ (if missing) and a client trust bundle.

`certs/bundle.pem` is the system's (or certifi's) CAs plus mitmproxy's CA, so
a client pointed at it trusts butter *and* keeps trusting everything else it
reaches through the proxy. Run by `make proxy`; safe to run again.
"""
from __future__ import annotations

import os
import ssl
import sys
from pathlib import Path

from mitmproxy.certs import CertStore

CERTS = Path(__file__).resolve().parents[1] / "certs"


def system_bundle() -> str:
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.openssl_cafile, "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and os.path.isfile(candidate):
            return Path(candidate).read_text()
    import certifi
    return Path(certifi.where()).read_text()


def main() -> int:
    CERTS.mkdir(exist_ok=True)
    CertStore.from_store(str(CERTS), "mitmproxy", 2048)  # writes the CA on first run only
    ca = (CERTS / "mitmproxy-ca-cert.pem").read_text()
    (CERTS / "bundle.pem").write_text(system_bundle().rstrip() + "\n" + ca)
    print(f"butter: CA {CERTS / 'mitmproxy-ca-cert.pem'}; trust bundle {CERTS / 'bundle.pem'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
