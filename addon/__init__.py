"""butter's mitmproxy shell (`butter.py`) and its wire adapters (`formats/`)."""
