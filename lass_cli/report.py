"""The JSON report written beside each input's stems (schema documented in docs/report.md)."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import __version__

REPORT_VERSION = 1


def build_report(**parts: Any) -> dict[str, Any]:
    """A report dict: the version fields first, then the given parts in order."""
    return {
        "lass_report": REPORT_VERSION,
        "lass_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **parts,
    }


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write JSON atomically (temp file in the same folder, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    try:
        partial.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def read_report(path: Path) -> dict[str, Any]:
    """Read a report, refusing versions this release does not know."""
    data = json.loads(Path(path).read_text())
    version = data.get("lass_report")
    if version != REPORT_VERSION:
        raise ValueError(f"{path}: report version {version!r} is not supported (expected {REPORT_VERSION})")
    return data
