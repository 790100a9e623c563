"""``tscope train stage1|stage2``: TerraScope's two training stages from a YAML recipe (``train/*.yaml``)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

import typer

from tscope.cli.options import JsonOption, print_json

app = typer.Typer(help="Train TerraScope: stage1 (grounded pretraining), stage2 (Terra-CoT instruction tuning).",
                  no_args_is_help=True)

ConfigOption = typer.Option(..., "--config", "-c", help="YAML recipe (see train/stage1.yaml, train/stage2.yaml).")
MaxStepsOption = typer.Option(None, "--max-steps", help="Stop after N optimizer steps (the schedule keeps its length).")
EvalEveryOption = typer.Option(None, "--eval-every", help="Score the held-out split every N steps (0: never).")
ResumeOption = typer.Option(False, "--resume", help="Continue from the last checkpoint in --out (same data order).")
OutOption = typer.Option(None, "--out", "-o", help="Output folder (default: the recipe's `out`).")
QuietOption = typer.Option(False, "--quiet", "-q", help="No progress bar.")


@contextlib.contextmanager
def _step_bar(quiet: bool) -> Iterator:
    """A rich bar with loss, lr and throughput on a terminal; nothing otherwise (metrics.jsonl has it all)."""
    if quiet or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TimeElapsedColumn, TimeRemainingColumn

    with Progress("[progress.description]{task.description}", BarColumn(), "{task.completed}/{task.total}",
                  "loss {task.fields[loss]}", "lr {task.fields[lr]}", "{task.fields[speed]}",
                  TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("training", total=None, loss="-", lr="-", speed="-")

        def update(m: dict) -> None:
            loss = f"{m['loss']:.4f}" if m.get("loss") is not None else "-"
            bar.update(task, completed=m["step"], total=m["total"], loss=loss, lr=f"{m['lr']:.2e}",
                       speed=f"{m['samples_per_s']:.2f} samples/s {m['tokens_per_s']:.0f} tok/s")

        yield update


def _run(stage: int, config: Path, max_steps: int | None, eval_every: int | None, resume: bool, out: Path | None,
         as_json: bool, quiet: bool) -> None:
    from tscope.errors import InputError
    from tscope.train.config import load_config
    from tscope.train.trainer import train

    cfg = load_config(config, max_steps=max_steps, eval_every=eval_every, out=out)
    if cfg.stage != stage:
        raise InputError(f"--config {config} is a stage {cfg.stage} recipe; run `tscope train stage{cfg.stage}`")
    with _step_bar(quiet) as bar:
        summary = train(cfg, resume=resume, on_step=bar)
    if as_json:
        print_json(summary)
    else:
        last = summary["last"]
        loss = f", last loss {last['loss']:.4f}" if last.get("loss") is not None else ""
        typer.echo(f"stage {stage}: {summary['steps']}/{summary['total_steps']} steps{loss} -> {summary['model']}")


@app.command("stage1")
def stage1(config: Path = ConfigOption, max_steps: int = MaxStepsOption, eval_every: int = EvalEveryOption,
           resume: bool = ResumeOption, out: Path = OutOption, as_json: bool = JsonOption,
           quiet: bool = QuietOption) -> None:
    """Grounded pretraining on referring pairs: only SAM-2's mask decoder and the seg head train."""
    _run(1, config, max_steps, eval_every, resume, out, as_json, quiet)


@app.command("stage2")
def stage2(config: Path = ConfigOption, max_steps: int = MaxStepsOption, eval_every: int = EvalEveryOption,
           resume: bool = ResumeOption, out: Path = OutOption, as_json: bool = JsonOption,
           quiet: bool = QuietOption) -> None:
    """Instruction tuning on Terra-CoT: LoRA on the LLM, projector, mask decoder and seg head train."""
    _run(2, config, max_steps, eval_every, resume, out, as_json, quiet)
