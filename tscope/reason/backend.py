"""The one interface both backends implement, and how the CLI picks one by name."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from tscope.errors import InputError
from tscope.geo.scene import Scene
from tscope.reason.query import Query
from tscope.reason.trace import Trace

Progress = Callable[[int, int], None]
"""``progress(done, total)``: called as blocks or tiles complete."""

BACKENDS = ("spectral", "terrascope")


class Backend(Protocol):
    name: str

    def reason(self, scenes: Sequence[Scene], query: Query, progress: Progress | None = None) -> Trace:
        """Answer ``query`` over ``scenes`` (one, or a t1/t2 pair on one grid) with a full Trace."""
        ...


def get_backend(name: str, **options: Any) -> Backend:
    """Build a backend by name. Heavy imports (torch, transformers) happen only for ``terrascope``."""
    if name == "spectral":
        from tscope.reason.spectral import SpectralBackend

        return SpectralBackend(**options)
    if name == "terrascope":
        from tscope.model.backend import TerraScopeBackend

        return TerraScopeBackend(**options)
    raise InputError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")
