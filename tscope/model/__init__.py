"""The TerraScope model: InternVL3 + SAM-2 on transformers 5 (see ``docs/model.md``).

Public entry points (imported lazily, so ``import tscope.model`` stays free of torch):

* :func:`load_terrascope` / :func:`save_terrascope` -- checkpoints (released or native layout);
* :class:`TerraScopeModel` -- the architecture (``vision_tower``, ``projector``, ``language_model``,
  ``sam2``, ``seg_head``); :class:`TerraScopeConfig` -- its configuration;
* :func:`generate` -- the interleaved [SEG] loop (module ``interleave``); :class:`TerraScopeBackend` -- scene scale.
"""

from __future__ import annotations

from importlib import import_module

_EXPORTS = {
    "load_terrascope": "tscope.model.loading", "save_terrascope": "tscope.model.loading",
    "model_info": "tscope.model.loading", "convert": "tscope.model.loading",
    "TerraScopeModel": "tscope.model.architecture", "TerraScopeConfig": "tscope.model.config",
    "generate": "tscope.model.interleave", "user_text": "tscope.model.prompt",
    "TerraScopeBackend": "tscope.model.backend",
    "ModelOutput": "tscope.model.backend",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(name)
