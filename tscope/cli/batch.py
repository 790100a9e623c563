"""``tscope batch AOIS.geojson --question "…" --datetime …``: fetch -> stack -> ask per AOI, on Dask."""

from __future__ import annotations

from pathlib import Path

import typer

from tscope.cli.options import JsonOption, OverwriteOption, print_json, progress_bar
from tscope.errors import InputError, RuntimeFailure


def command(
    aois: Path = typer.Argument(..., metavar="AOIS", help="Vector file of AOI polygons (ids from id/aoi_id/name)."),
    question: list[str] = typer.Option(None, "--question", help="A question to ask of every AOI (repeatable)."),
    questions: Path = typer.Option(None, "--questions", help="A file of questions, one per line (# comments)."),
    datetime: list[str] = typer.Option(..., "--datetime",
                                       help="ISO 8601 date or START/END; give it twice for a before/after pair."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: DIR/aois/<aoi-id>/ and DIR/manifest.json."),
    collection: str = typer.Option("s2-l2a", "--collection", "--collections", "-c",
                                   help="s2-l2a, s1, or a STAC collection id."),
    catalog: str = typer.Option("earth-search", "--catalog",
                                help="earth-search, planetary-computer, cdse, or a STAC API URL."),
    max_cloud: float = typer.Option(None, "--max-cloud", help="Keep items with eo:cloud_cover <= N (%)."),
    crs: str = typer.Option(None, "--crs", help="Output CRS (default: the UTM zone of each AOI's centre)."),
    resolution: float = typer.Option(10.0, "--resolution", help="Output pixel size in CRS units."),
    bands: str = typer.Option(None, "--bands", help="Common names to fetch (default: all 10/20 m bands + scl)."),
    workers: int = typer.Option(2, "--workers", help="Dask LocalCluster worker processes."),
    scheduler: str = typer.Option(None, "--scheduler", help="Address of a running Dask scheduler (tcp://...)."),
    resources: str = typer.Option(None, "--resources",
                                  help="Dask resources each AOI holds, e.g. GPU=1 (workers: dask worker --resources)."),
    backend: str = typer.Option("spectral", "--backend", help="spectral or terrascope (one model per worker)."),
    model: Path = typer.Option(None, "--model", help="terrascope: checkpoint folder, seen by every worker."),
    quant: str = typer.Option("none", "--quant", help="terrascope: none, 8bit or 4bit."),
    dtype: str = typer.Option("bf16", "--dtype", help="terrascope: bf16, fp16 or fp32."),
    device: str = typer.Option("auto", "--device", help="terrascope: auto, cpu, cuda, cuda:N."),
    batch_tiles: int = typer.Option(8, "--batch-tiles", help="terrascope: tile prompts decoded together."),
    timeout: float = typer.Option(60.0, "--timeout", help="Seconds to wait for each HTTP answer."),
    retries: int = typer.Option(4, "--retries", help="Retries on connection errors, 429 and 5xx."),
    backoff: float = typer.Option(1.0, "--backoff", help="First retry delay (s), doubled after each retry."),
    overwrite: bool = OverwriteOption,
    as_json: bool = JsonOption,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Run fetch -> stack -> ask for every AOI; resumable; exit 1 if any AOI failed."""
    from tscope.batch.run import BatchConfig, parse_resources, read_questions, run_batch
    from tscope.reason.backend import BACKENDS
    from tscope.stac.http import NetworkPolicy
    from tscope.stac.load import LoadOptions

    if backend not in BACKENDS:
        raise InputError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    options: dict = {}
    if backend == "terrascope":
        if model is None or not model.is_dir():
            raise InputError("--backend terrascope needs --model DIR (a TerraScope checkpoint folder)")
        if batch_tiles < 1:
            raise InputError(f"--batch-tiles must be at least 1, got {batch_tiles}")
        options = dict(model=str(model.absolute()), quant=quant, dtype=dtype, device=device, batch_tiles=batch_tiles)
    names = tuple(b.strip().lower() for b in bands.split(",") if b.strip()) if bands else None
    config = BatchConfig(
        questions=read_questions(question, questions), datetimes=tuple(datetime), catalog=catalog,
        collection=collection, max_cloud=max_cloud, load=LoadOptions(crs=crs, resolution=resolution, bands=names),
        policy=NetworkPolicy(timeout=timeout, connect_timeout=min(timeout, 10.0), retries=retries, backoff=backoff),
        backend=backend, backend_options=options,
    )
    with progress_bar("AOIs", quiet=quiet) as progress:
        summary = run_batch(aois, config, out, workers=workers, scheduler=scheduler, overwrite=overwrite,
                            progress=progress, resources=parse_resources(resources))
    if as_json:
        print_json(summary.to_dict())
    else:
        _table(summary)
    if summary.failed:
        raise RuntimeFailure(f"{len(summary.failed)} of {len(summary.results)} AOIs failed"
                             f" ({', '.join(summary.failed)}); see {summary.out / 'manifest.json'}")


def _table(summary) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("AOI", "status", "answer / reason", title=f"tscope batch: {summary.out}")
    for aoi_id, entry in summary.results.items():
        if entry.get("status") == "done":
            text = " | ".join(entry.get("answers", {}).values())
            status = "skipped (done)" if aoi_id in summary.skipped else "done"
        else:
            text, status = entry.get("reason", ""), "FAILED"
        table.add_row(aoi_id, status, text)
    Console(soft_wrap=True).print(table)
