"""Checkpoints: the model in tscope's native layout plus the trainer state, all safetensors + JSON.

``OUT/checkpoints/step-000123/``::

    model/                      native layout (terrascope.json, internvl/, sam2/, seg_head.safetensors,
                                tokenizer); LoRA merged, so it loads in ``tscope ask --backend terrascope``
    trainer/trainable.safetensors   the trainable parameters as trained (LoRA un-merged)
    trainer/optimizer.safetensors   the optimizer's tensors ("<param index>.<name>")
    trainer/state.json          step, config, optimizer scalars and param groups, parameter names

A checkpoint is written into a temporary sibling folder and renamed into place, so a killed run
never leaves a half checkpoint that ``--resume`` would pick up. Nothing is pickled.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

from torch import nn

from tscope.errors import InputError
from tscope.geo.writers import atomic_dir

STEP_DIR = re.compile(r"^step-(\d+)$")


def export_model(model: nn.Module, tokenizer, path: str | Path) -> Path:
    """Write ``model`` in the native layout with every LoRA update merged (the training model is unchanged)."""
    from tscope.model.loading import save_terrascope
    from tscope.train.freeze import merged_linears

    merged = merged_linears(model)
    swapped = []
    try:
        for name, linear in merged.items():
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            swapped.append((parent, attr, getattr(parent, attr)))
            setattr(parent, attr, linear)
        return save_terrascope(model, tokenizer, path)
    finally:
        for parent, attr, original in reversed(swapped):
            setattr(parent, attr, original)


def trainable_state(model: nn.Module) -> dict:
    return {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}


def _flatten_optimizer(state: dict) -> tuple[dict, dict]:
    import torch

    tensors, scalars = {}, {}
    for pid, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{pid}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{pid}.{key}"] = value
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in state["param_groups"]]
    return tensors, {"scalars": scalars, "param_groups": groups}


def _unflatten_optimizer(tensors: dict, meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for key, value in list(tensors.items()) + list(meta["scalars"].items()):
        pid, _, name = key.partition(".")
        state.setdefault(int(pid), {})[name] = value
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def save_checkpoint(out: Path, step: int, model: nn.Module, tokenizer, optimizer, state: dict,
                    export: bool = True) -> Path:
    """Write ``OUT/checkpoints/step-<step>`` atomically; returns its path."""
    from safetensors.torch import save_file

    root = Path(out) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    with atomic_dir(final) as tmp:
        trainer = tmp / "trainer"
        trainer.mkdir()
        save_file(trainable_state(model), str(trainer / "trainable.safetensors"), metadata={"format": "pt"})
        tensors, meta = _flatten_optimizer(optimizer.state_dict()) if optimizer is not None else ({}, None)
        save_file(tensors, str(trainer / "optimizer.safetensors"), metadata={"format": "pt"})
        (trainer / "state.json").write_text(json.dumps({**state, "step": step, "optimizer": meta}, indent=2) + "\n")
        if export:
            export_model(model, tokenizer, tmp / "model")
    return final


def checkpoints(out: str | Path) -> list[Path]:
    """Complete checkpoints under ``OUT/checkpoints``, oldest first."""
    root = Path(out) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name))
             and (p / "trainer" / "state.json").exists()]
    return [p for _, p in sorted(found)]


def prune(out: str | Path, keep: int) -> None:
    """Keep the newest ``keep`` checkpoints (``keep`` <= 0 keeps all)."""
    if keep <= 0:
        return
    for path in checkpoints(out)[:-keep]:
        shutil.rmtree(path, ignore_errors=True)


def load_checkpoint(path: Path, model: nn.Module, optimizer) -> dict:
    """Restore trainable parameters and optimizer state from ``path``; returns its state.json."""
    import torch
    from safetensors.torch import load_file

    trainer = Path(path) / "trainer"
    state = json.loads((trainer / "state.json").read_text())
    weights = load_file(str(trainer / "trainable.safetensors"))
    params = dict(model.named_parameters())
    wanted = {n for n, p in params.items() if p.requires_grad}
    if set(weights) != wanted:
        diff = sorted(set(weights) ^ wanted)[:5]
        raise InputError(f"--resume {path}: its trainable parameters do not match this recipe ({', '.join(diff)})")
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value.to(params[name].device, params[name].dtype))
    meta = state.pop("optimizer")
    if meta is None:
        logging.getLogger("tscope.train").warning("%s has no optimizer state (DeepSpeed run): Adam restarts", path)
        return state
    tensors = load_file(str(trainer / "optimizer.safetensors"))
    optimizer.load_state_dict(_unflatten_optimizer(tensors, meta))
    return state
