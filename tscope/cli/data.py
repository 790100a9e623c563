"""``tscope data synth|res``: Terra-CoT training samples and referring-segmentation pairs from labels."""

from __future__ import annotations

from pathlib import Path

import typer

from tscope.cli.options import JsonOption, OverwriteOption, print_json, progress_bar
from tscope.errors import InputError, RuntimeFailure

app = typer.Typer(help="Training data: Terra-CoT synthesis (synth) and stage-1 referring segmentation (res).",
                  no_args_is_help=True)

LabelsOption = typer.Option(None, "--labels", help="Label raster (class map GeoTIFF), warped onto each image.")
ClassesOption = typer.Option(None, "--classes",
                             help="Class table: JSON {\"1\": \"forest\"} or lines '1 forest' (default: CLASSES tag).")
FootprintsOption = typer.Option(None, "--footprints", help="Building footprints: xBD JSON or GeoJSON.")
ChipOption = typer.Option(None, "--chip", help="Cut images into N x N px chips (default: whole image).")


def require_bench_extra() -> None:
    """pycocotools and pyarrow come with the ``bench`` extra: say so instead of an ImportError."""
    import importlib.util

    missing = [m for m in ("pycocotools", "pyarrow") if importlib.util.find_spec(m) is None]
    if missing:
        raise RuntimeFailure(f"{', '.join(missing)} not installed: pip install 'tscope[bench]'")


def _check_out(out: Path, name: str, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a folder")
    if (out / name).exists() and not overwrite:
        raise InputError(f"{out / name} exists; pass --overwrite to replace it")


@app.command("synth")
def synth(
    images: list[Path] = typer.Argument(..., metavar="IMAGE...", help="Georeferenced images (GeoTIFF)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: terra_cot.jsonl and images/."),
    labels: Path = LabelsOption,
    classes: Path = ClassesOption,
    footprints: Path = FootprintsOption,
    post: Path = typer.Option(None, "--post", help="Post-event image: IMAGE is then the pre-event one (damage)."),
    tasks: str = typer.Option(None, "--tasks", help="Comma list of existence, counting, localisation, area,"
                                                    " coverage, boundary, distance, damage (default: all)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the class choices and templates (deterministic)."),
    chip: int = ChipOption,
    limit: int = typer.Option(None, "--limit", help="Stop after N samples."),
    overwrite: bool = OverwriteOption,
    as_json: bool = JsonOption,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Write Terra-CoT samples (official training JSON lines, COCO RLE masks) from images and labels."""
    require_bench_extra()
    from tscope.data.synth import Sources, synthesise

    _check_out(out, "terra_cot.jsonl", overwrite)
    sources = Sources.open(labels, classes, footprints)
    with progress_bar("synthesising", quiet=quiet) as progress:
        summary = synthesise(images, out, sources, post=post, tasks=tasks, seed=seed, chip=chip, limit=limit,
                             progress=progress)
    if as_json:
        print_json(summary)
    else:
        typer.echo(f"{summary['samples']} samples -> {summary['file']}")


@app.command("res")
def res(
    images: list[Path] = typer.Argument(..., metavar="IMAGE...", help="Georeferenced images (GeoTIFF)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: res.jsonl and images/."),
    labels: Path = LabelsOption,
    classes: Path = ClassesOption,
    footprints: Path = FootprintsOption,
    chip: int = ChipOption,
    limit: int = typer.Option(None, "--limit", help="Stop after N samples."),
    overwrite: bool = OverwriteOption,
    as_json: bool = JsonOption,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Write "Please segment the CLASS." pairs with one RLE mask each (stage-1 training)."""
    require_bench_extra()
    from tscope.data.res import res_records
    from tscope.data.synth import Sources

    _check_out(out, "res.jsonl", overwrite)
    sources = Sources.open(labels, classes, footprints)
    with progress_bar("referring pairs", quiet=quiet) as progress:
        summary = res_records(images, out, sources, chip=chip, limit=limit, progress=progress)
    if as_json:
        print_json(summary)
    else:
        typer.echo(f"{summary['samples']} samples -> {summary['file']}")
