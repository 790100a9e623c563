"""``tscope bench build|eval``: build TerraScope-Bench samples; evaluate a backend on a bench parquet."""

from __future__ import annotations

from pathlib import Path

import typer

from tscope.cli.data import ChipOption, ClassesOption, FootprintsOption, LabelsOption, require_bench_extra
from tscope.cli.options import Backend, Dtype, JsonOption, OverwriteOption, Quant, print_json, progress_bar
from tscope.errors import InputError

app = typer.Typer(help="TerraScope-Bench: build samples (build) and evaluate a backend (eval).", no_args_is_help=True)


@app.command("build")
def build(
    images: list[Path] = typer.Argument(..., metavar="IMAGE...", help="Georeferenced images (GeoTIFF)."),
    out: Path = typer.Option(..., "--out", "-o", help="Bench parquet to write."),
    labels: Path = LabelsOption,
    classes: Path = ClassesOption,
    footprints: Path = FootprintsOption,
    post: Path = typer.Option(None, "--post", help="Post-event image for BCE: IMAGE is the pre-event one."),
    tasks: str = typer.Option(None, "--tasks", help="Comma list of CA, AQ, CR, BRD, DM, BCE (default: all)."),
    seed: int = typer.Option(0, "--seed", help="Seed of class choices, distractors and option order."),
    chip: int = ChipOption,
    limit: int = typer.Option(None, "--limit", help="Stop after N samples."),
    overwrite: bool = OverwriteOption,
    as_json: bool = JsonOption,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Build multiple-choice samples with ground-truth masks, in the official bench parquet schema."""
    require_bench_extra()
    from tscope.bench.build import build_bench
    from tscope.data.synth import Sources

    if out.exists() and not overwrite:
        raise InputError(f"{out} exists; pass --overwrite to replace it")
    if out.suffix.lower() != ".parquet":
        raise InputError(f"--out {out}: give a .parquet file name")
    sources = Sources.open(labels, classes, footprints)
    with progress_bar("building", quiet=quiet) as progress:
        summary = build_bench(images, out, sources, post=post, tasks=tasks, seed=seed, chip=chip, limit=limit,
                              progress=progress)
    if as_json:
        print_json(summary)
    else:
        typer.echo(f"{summary['samples']} samples -> {summary['file']}")


@app.command("eval")
def evaluate_command(
    bench: Path = typer.Argument(..., metavar="BENCH.parquet", help="Official or tscope bench parquet."),
    out: Path = typer.Option(None, "--out", "-o",
                             help="Report folder: results.jsonl, report.json, report.md (default: BENCH_<backend>)."),
    backend: Backend = typer.Option(Backend.spectral, "--backend",
                                    help="spectral (reads the georeferenced sources) or terrascope."),
    model: Path = typer.Option(None, "--model", help="terrascope: checkpoint folder."),
    quant: Quant = typer.Option(Quant.none, "--quant", help="terrascope: quantise the language model."),
    dtype: Dtype = typer.Option(Dtype.bf16, "--dtype", help="terrascope: weight and compute precision."),
    device: str = typer.Option("auto", "--device", help="terrascope: auto, cpu, cuda, cuda:N."),
    tasks: str = typer.Option(None, "--tasks", help="Comma list of task types or abbreviations (CA,BRD,...)."),
    limit: int = typer.Option(None, "--limit", help="Evaluate only the first N (selected) samples."),
    restart: bool = typer.Option(False, "--restart", help="Discard earlier results in --out instead of resuming."),
    as_json: bool = JsonOption,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Score a backend: per-task accuracy, macro average, mask IoU; resumes an interrupted run."""
    require_bench_extra()
    from tscope.bench.evaluate import SpectralAnswerer, evaluate
    from tscope.bench.report import summarise, write_report
    from tscope.geo.writers import rollback_on_failure

    backend_name = backend.value
    out = out or bench.with_name(f"{bench.stem}_{backend_name}")
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a folder")
    if not bench.exists():
        raise InputError(f"{bench}: no such bench file")
    if backend is Backend.spectral and (model is not None or quant is not Quant.none or dtype is not Dtype.bf16
                                        or device != "auto"):
        raise InputError("--model, --quant, --dtype and --device apply to --backend terrascope only")
    if backend is Backend.spectral:
        answerer = SpectralAnswerer(bench.resolve().parent)
        name = "spectral"
    else:
        if model is None:
            raise InputError("--backend terrascope needs --model DIR (a TerraScope checkpoint folder)")
        from tscope.reason.backend import get_backend

        answerer = get_backend("terrascope", model=model, quant=quant.value, dtype=dtype.value,
                               device=device)
        if not hasattr(answerer, "chat"):
            raise InputError("this terrascope backend has no chat(images, prompt) method to answer bench samples")
        name = f"TerraScope ({model.name})"
    results = out / "results.jsonl"
    if restart and results.exists():
        results.unlink()
    chosen = [t for t in tasks.split(",")] if tasks else None
    # Results of scored samples stay for the next run to resume from; a run that fails before scoring
    # any (a bad bench file) leaves no empty folder.
    with rollback_on_failure() as made, progress_bar("evaluating", quiet=quiet) as progress:
        made.mkdir(out)
        records = evaluate(bench, answerer, results, tasks=chosen, limit=limit, progress=progress)
    summary = summarise(records, name)
    paths = write_report(summary, out)
    if as_json:
        print_json(summary | {"outputs": paths | {"results": str(results)}})
    else:
        for task, v in summary["per_task"].items():
            typer.echo(f"{v['abbreviation']:>5} {v['accuracy']:6.1f}%  ({v['correct']}/{v['total']})  {task}")
        macro = summary["macro_accuracy"]
        typer.echo(f"  Avg. {macro:6.1f}%" if macro is not None else "  Avg.      -")
        typer.echo(f"report: {paths['markdown']}", err=True)
