"""The batch manifest: what a run was asked to do and which AOIs are done or failed.

``DIR/manifest.json`` is rewritten atomically after every AOI, by the driver process only (workers
return their records), so it is never half-written and never raced. It holds no timings, so two
runs that did the same work write the same bytes. The commit point of an AOI is the rename of its
folder into place (see :mod:`tscope.batch.run`); the manifest mirrors it and records failures.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from tscope import __version__
from tscope.errors import InputError
from tscope.geo.writers import write_json

MANIFEST = "manifest.json"


@dataclass
class Manifest:
    path: Path
    config: dict
    aois: dict[str, dict] = field(default_factory=dict)

    def done(self, aoi_id: str) -> bool:
        return self.aois.get(aoi_id, {}).get("status") == "done"

    def record(self, aoi_id: str, entry: dict) -> None:
        self.aois[aoi_id] = entry
        self.save()

    def save(self) -> None:
        write_json(self.path, {"tscope_version": __version__, "config": self.config,
                               "aois": {k: self.aois[k] for k in sorted(self.aois)}})


def open_manifest(out: Path, config: dict, restart: bool = False) -> Manifest:
    """The manifest of ``out`` for ``config``: resumed if it exists with the same config."""
    path = out / MANIFEST
    if path.exists() and not restart:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InputError(f"{path} is unreadable ({exc}); pass --overwrite to start afresh") from None
        if data.get("config") != config:
            raise InputError(f"{out} holds a batch run with other parameters; use another --out, or pass"
                             " --overwrite to start afresh")
        return Manifest(path=path, config=config, aois=dict(data.get("aois", {})))
    return Manifest(path=path, config=config)
