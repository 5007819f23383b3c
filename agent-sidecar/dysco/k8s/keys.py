"""Control-message keys from a mounted Secret (rotation without restarting the agents).

Layout of the directory (the chart mounts Secret ``<release>-dysco-control-key`` there):
``key-<id>`` files (id 1..255, any bytes) and ``current`` (the id agents send with).
Rotation: add ``key-2`` (agents accept both), set ``current`` to 2, later delete ``key-1``.
Kubernetes updates mounted Secret files in place; the agent re-reads them every step.
"""

from __future__ import annotations

from pathlib import Path


class BadKeys(ValueError):
    """The key directory is malformed (reported, the previous keys stay in force)."""


def load_keys(directory: Path) -> tuple[dict[int, bytes], int]:
    keys: dict[int, bytes] = {}
    for f in sorted(directory.glob("key-*")):
        ident = f.name[4:]
        if not ident.isdigit() or not 1 <= int(ident) <= 255:
            raise BadKeys(f"{f.name}: key ids are 1..255")
        value = f.read_bytes().strip()
        if len(value) < 16:
            raise BadKeys(f"{f.name}: a key needs at least 16 bytes")
        keys[int(ident)] = value
    current_file = directory / "current"
    if not current_file.exists():
        raise BadKeys(f"{directory}: no 'current' file")
    current = current_file.read_text().strip()
    if not current.isdigit() or int(current) not in keys:
        raise BadKeys(f"current key id {current!r} has no key-{current} file")
    return keys, int(current)
