"""The `butter` command: see and steer what butter remembers."""
