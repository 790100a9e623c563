"""The training loop shared by both stages: one process or many (accelerate: DDP or DeepSpeed ZeRO-2).

Per optimizer step: the step's global batch (a seeded permutation per epoch,
:func:`tscope.train.schedule.batch_indices`) is split across processes; each forwards its samples one
at a time (:class:`~tscope.train.forward.TeacherForcing`) and accumulates gradients, scaled so the
update is the mean over the global batch; then gradient clipping and Adam(W) with the learning rate
of :func:`tscope.train.schedule.lr_at`. Dropout is reseeded from (seed, step) every step and the mask
loss's point sampling from (seed, step, sample), so ``--resume`` from a checkpoint reproduces the
uninterrupted run exactly (same data order, same schedule, same randomness), and the points of a sample
do not depend on how the batch is split across processes.

Outputs under ``OUT``: ``metrics.jsonl`` (one JSON object per step, plus ``"eval"`` lines),
``checkpoints/step-N/`` (:mod:`tscope.train.checkpoint`), ``model/`` (the final model, native layout),
``config.json`` (the resolved recipe).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from tscope.errors import InputError
from tscope.train.config import TrainConfig

log = logging.getLogger("tscope.train")

# Recipe keys a resumed run must share with the checkpoint (they fix data order and schedule).
RESUME_KEYS = ("stage", "model", "data", "image_root", "eval_data", "eval_fraction", "batch_size", "device_batch",
               "grad_accumulation", "lr", "scheduler",
               "warmup_ratio", "warmup_start_factor", "min_lr", "epochs", "optimizer", "betas", "weight_decay",
               "seed", "lora", "loss", "train_embeddings", "max_length")

StepCallback = Callable[[dict], None]


def _accelerator(config: TrainConfig):
    from datetime import timedelta

    import torch
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs

    cuda = torch.cuda.is_available() and config.device != "cpu"
    mixed = {"bf16": "bf16", "fp16": "fp16", "fp32": "no"}[config.precision]
    if not cuda and mixed != "no":
        # CPU autocast in bf16 is slower than fp32 here and changes nothing about the recipe's result
        # beyond rounding; keep CPU runs (tests, smoke runs) in fp32.
        log.info("no CUDA device: training in fp32 instead of %s", config.precision)
        mixed = "no"
    # The loop accumulates and scales gradients itself, and accelerate's backward() divides the loss by
    # gradient_accumulation_steps: leave it at 1, except under DeepSpeed, whose engine needs the number of
    # backward passes per step (train/deepspeed_zero2.json says "auto": accelerate fills in this value)
    # and does the division instead; the loop then marks each step's last backward (accelerate.accumulate).
    steps = 1
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        steps = max(1, config.global_batch(world) // world)
    # Process 0 alone scores the held-out split while the others wait in the next all-reduce: allow
    # more than NCCL's default 10 minutes for it.
    return Accelerator(mixed_precision=mixed, cpu=not cuda, gradient_accumulation_steps=steps,
                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True),
                                        InitProcessGroupKwargs(timeout=timedelta(hours=2))])


def _metrics_lines(path: Path, upto: int) -> None:
    """Drop metric lines of steps after ``upto`` (they are recomputed by the resumed run)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn last line of a killed run
        if record.get("step", 0) <= upto:
            kept.append(line)
    from tscope.geo.writers import write_text

    write_text(path, "".join(k + "\n" for k in kept))


def _check_resume(config: TrainConfig, saved: dict) -> None:
    now = config.to_dict()
    diff = [k for k in RESUME_KEYS
            if json.dumps(now.get(k), sort_keys=True) != json.dumps(saved.get(k), sort_keys=True)]
    if diff:
        raise InputError(f"--resume: the recipe differs from the checkpoint's in {', '.join(diff)}")


def train(config: TrainConfig, resume: bool = False, on_step: StepCallback | None = None) -> dict:
    """Run (or resume) one stage; returns a summary with the final metrics and output paths."""
    import torch

    from tscope.model.loading import load_terrascope
    from tscope.train import checkpoint as ckpt
    from tscope.train.dataset import TrainData, read_jsonl, split_holdout
    from tscope.train.evaluate import evaluate_holdout
    from tscope.train.forward import TeacherForcing, TooLong
    from tscope.train.freeze import apply_stage, train_mode
    from tscope.train.schedule import batch_indices, lr_at, steps_per_epoch

    out = Path(config.out)
    existing = ckpt.checkpoints(out)
    if resume and not existing:
        raise InputError(f"--resume: no checkpoint under {out / 'checkpoints'}")
    if not resume and existing:
        raise InputError(f"{out} already has checkpoints; pass --resume to continue or choose another --out")
    acc = _accelerator(config)
    world, rank = acc.num_processes, acc.process_index
    from accelerate.utils import DistributedType

    deepspeed = acc.distributed_type == DistributedType.DEEPSPEED
    batch_size = config.global_batch(world)
    if world > 1 and batch_size % world:
        raise InputError(f"batch_size {batch_size} is not a multiple of the {world} processes")

    records = read_jsonl(config.data)
    root = config.image_root or Path(config.data).parent
    if config.eval_data:
        held = TrainData(read_jsonl(config.eval_data), config.image_root or Path(config.eval_data).parent)
    else:
        records, held_records = split_holdout(records, config.eval_fraction, config.seed)
        held = TrainData(held_records, root)
    data = TrainData(records, root)
    # Every process must run the same number of backward passes, and DeepSpeed exactly its accumulation
    # steps per optimizer step: no partial last batch then.
    drop_last = world > 1 or deepspeed
    try:
        per_epoch = steps_per_epoch(len(data), batch_size, drop_last)
    except ValueError as exc:
        raise InputError(f"{config.data}: {exc}") from None
    total = per_epoch * config.epochs
    stop = min(total, config.max_steps) if config.max_steps else total

    torch.manual_seed(config.seed)
    device = "cpu" if acc.device.type == "cpu" else str(acc.device)  # multi-process CPU reports "cpu:0"
    loaded = load_terrascope(config.model, dtype="fp32", device=device, quant="none")
    model, tokenizer = loaded.model, loaded.tokenizer
    trainable = apply_stage(model, config.stage, config.lora, config.train_embeddings)
    if config.gradient_checkpointing:
        # Recompute the LLM's layer activations in backward instead of keeping them: a 12-tile image is
        # ~3k tokens, a pair twice that, and 8B activations per token do not fit otherwise (the release
        # enables it too). Non-reentrant, so frozen inputs need no requires_grad.
        llm = model.language_model
        if hasattr(llm, "activation_checkpointing_enable"):  # its name from transformers 5.x on
            llm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    train_mode(model)
    module = TeacherForcing(model, tokenizer, config.loss, config.max_length)
    params = [p for p in model.parameters() if p.requires_grad]
    opt_cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    optimizer = opt_cls(params, lr=config.lr, betas=config.betas, eps=config.eps, weight_decay=config.weight_decay)
    start = 0
    if resume:
        state = ckpt.load_checkpoint(existing[-1], model, optimizer)
        _check_resume(config, state["config"])
        if int(state.get("global_batch", batch_size)) != batch_size:
            # A per-process batch makes the global one depend on the number of processes, and with it
            # the data order: a resumed run on another number of processes is a different run.
            raise InputError(f"--resume: the checkpoint's steps have {state['global_batch']} samples, this run's "
                             f"{batch_size} ({world} processes x {config.device_batch} x {config.grad_accumulation})")
        start = int(state["step"])
        log.info("resuming from %s (step %d)", existing[-1], start)
    wrapped, optimizer = acc.prepare(module, optimizer)
    metrics_path = out / "metrics.jsonl"
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        from tscope.geo.writers import write_json

        write_json(out / "config.json", config.to_dict())
        if resume:
            _metrics_lines(metrics_path, start)
        elif metrics_path.exists():
            metrics_path.unlink()
    n_trainable = sum(p.numel() for p in params)
    log.info("stage %d: %d samples (%d held out), %d steps of %d, %d trainable tensors (%d parameters)",
             config.stage, len(data), len(held), total, batch_size, len(trainable), n_trainable)

    last: dict = {}
    for step in range(start, stop):
        t0 = time.perf_counter()
        torch.manual_seed(config.seed * 1_000_003 + step)
        lr = lr_at(step, total, config.lr, config.warmup_ratio, config.scheduler, config.warmup_start_factor,
                   config.min_lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = batch_indices(step, len(data), batch_size, config.seed, drop_last)
        mine = batch[rank::world]
        # DDP averages gradients over processes: scale so the update is the mean over the global batch.
        # DeepSpeed divides by its gradient_accumulation_steps (= batch / processes) itself.
        scale = 1.0 if deepspeed else world / len(batch)
        optimizer.zero_grad(set_to_none=True)
        sums = {"loss": 0.0, "lm_loss": 0.0, "seg_loss": 0.0, "bce": 0.0, "dice": 0.0, "iou_mse": 0.0}
        ious, tokens, skipped, done = [], 0, 0, 0
        for k, index in enumerate(mine):
            if deepspeed:  # the engine steps at the boundary accelerate.accumulate marks (every `steps` passes)
                sync = acc.accumulate(wrapped)
            else:  # DDP all-reduces gradients in the last backward of the step only
                sync = contextlib.nullcontext() if k == len(mine) - 1 else acc.no_sync(wrapped)
            with sync:
                # Every sample gets exactly one backward, so all processes reach the all-reduce (DDP)
                # and the accumulation boundary (DeepSpeed) together; one that cannot train gets the
                # placeholder's zero loss instead.
                sample = data[index]
                try:
                    plan = module.plan(sample)
                except TooLong as exc:
                    log.warning("%s; skipped", exc)
                    plan = None
                seed = (config.seed * 1_000_003 + step) * 1_000_003 + index  # per sample: see TeacherForcing
                result = wrapped(sample, plan, seed % 2**63) if plan is not None else None
                usable = result is not None and result["loss"].requires_grad  # stage 1 without [SEG]: nothing
                acc.backward((result["loss"] * scale) if usable else wrapped(None)["loss"])
            if result is None:
                skipped += 1
                continue
            sums["loss"] += float(result["loss"].detach())
            for key in ("lm_loss", "seg_loss", "bce", "dice", "iou_mse"):
                sums[key] += result[key]
            ious.extend(v for v in result["iou"] if v is not None)
            tokens += result["length"]
            done += 1
        grad_norm = None
        if config.max_grad_norm and config.max_grad_norm > 0:
            norm = acc.clip_grad_norm_(params, config.max_grad_norm)  # None under DeepSpeed (it clips itself)
            grad_norm = float(norm) if norm is not None else None
        optimizer.step()
        elapsed = time.perf_counter() - t0
        last = {"step": step + 1, "epoch": round((step + 1) / per_epoch, 4), "lr": lr,
                **{k: (v / done if done else None) for k, v in sums.items()},
                "mask_iou": (sum(ious) / len(ious)) if ious else None, "grad_norm": grad_norm,
                "samples": done * world, "skipped": skipped, "tokens": tokens * world,
                "samples_per_s": done * world / elapsed, "tokens_per_s": tokens * world / elapsed,
                "seconds": round(elapsed, 4)}
        records_out = [last]
        if config.eval_every and (step + 1) % config.eval_every == 0 and len(held) and acc.is_main_process:
            scores = evaluate_holdout(acc.unwrap_model(wrapped), held, config.eval_limit, config.eval_max_new_tokens)
            records_out.append({"step": step + 1, "eval": scores})
            last = {**last, "eval": scores}  # the step line itself stays without it
        if acc.is_main_process:
            with open(metrics_path, "a", encoding="utf-8") as fh:
                for record in records_out:
                    fh.write(json.dumps(record) + "\n")
        if on_step is not None and acc.is_main_process:
            on_step({**last, "total": stop})
        if (config.save_every and (step + 1) % config.save_every == 0) or step + 1 == stop:
            if acc.is_main_process:
                # DeepSpeed shards Adam's moments; its own format for them is pickle-based, so they are
                # not saved there (a resumed ZeRO-2 run restarts them; weights and data order resume).
                inner = None if deepspeed else getattr(optimizer, "optimizer", optimizer)
                ckpt.save_checkpoint(out, step + 1, model, tokenizer, inner,
                                     {"config": config.to_dict(), "total_steps": total, "global_batch": batch_size})
                ckpt.prune(out, config.save_total_limit)
            acc.wait_for_everyone()
    final = None
    if acc.is_main_process:
        final = ckpt.export_model(model, tokenizer, out / "model")
    acc.wait_for_everyone()
    return {"stage": config.stage, "steps": stop, "total_steps": total, "start_step": start, "batch_size": batch_size,
            "samples": len(data), "held_out": len(held), "trainable_parameters": n_trainable,
            "last": last, "model": str(final) if final else None, "metrics": str(metrics_path),
            "checkpoints": [str(p) for p in ckpt.checkpoints(out)]}
