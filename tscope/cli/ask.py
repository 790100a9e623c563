"""``tscope ask SCENE [SCENE2] QUESTION``: answer a question about one scene or a before/after pair."""

from __future__ import annotations

import contextlib
from pathlib import Path

import typer

from tscope.cli.options import (
    Backend,
    Dtype,
    JsonOption,
    OverwriteOption,
    Quant,
    QuietOption,
    SarFormat,
    VerboseOption,
    command_logging,
    print_json,
    progress_bar,
)
from tscope.errors import InputError


def command(
    args: list[str] = typer.Argument(..., metavar="SCENE [SCENE2] QUESTION",
                                     help="One GeoTIFF (or a before and an after one), then the question."),
    out: Path = typer.Option(None, "--out", "-o", help="Output folder (default: named after scene and question)."),
    overwrite: bool = OverwriteOption,
    as_json: bool = JsonOption,
    backend: Backend = typer.Option(Backend.spectral, "--backend",
                                    help="spectral (embedded, CPU) or terrascope (the VLM)."),
    model: Path = typer.Option(None, "--model", help="terrascope: checkpoint folder (released or tscope layout)."),
    quant: Quant = typer.Option(Quant.none, "--quant", help="terrascope: quantise the language model."),
    dtype: Dtype = typer.Option(Dtype.bf16, "--dtype", help="terrascope: weight and compute precision."),
    device: str = typer.Option("auto", "--device", help="terrascope: auto, cpu, cuda, cuda:N."),
    tile_overlap: int = typer.Option(64, "--tile-overlap", help="terrascope scene mode: overlap between tiles (px)."),
    batch_tiles: int = typer.Option(8, "--batch-tiles",
                                    help="terrascope scene mode: tile prompts decoded together (batch size)."),
    tile_answers: int = typer.Option(16, "--tile-answers",
                                     help="terrascope, free-form question on a scene larger than one model input:"
                                          " also list each tile's own answer when there are at most this many."),
    bands: str = typer.Option(None, "--bands", help="Band names in file order, e.g. red,green,blue,nir (_ skips one)."),
    sensor: str = typer.Option(None, "--sensor", help="Band preset: s2-l2a, s2-l1c, landsat8, rgbn, rgb, s1."),
    l2a_offset: bool = typer.Option(
        False, "--l2a-offset/--no-l2a-offset",
        help="Subtract the Sentinel-2 baseline-04.00 offset (DN-1000), unless the file declares it."
    ),
    sar_format: SarFormat = typer.Option(SarFormat.auto, "--sar-format",
                                         help="SAR values (auto: complex dtype, else dB if mostly negative)."),
    nodata: float = typer.Option(None, "--nodata", help="Nodata value, overriding the file's."),
    assume_crs: str = typer.Option(None, "--assume-crs", help="CRS for files that have none, e.g. EPSG:32633."),
    gsd: float = typer.Option(None, "--gsd", help="Plain images (PNG, JPEG, no georeferencing): metres per pixel,"
                              " for answers in ground units instead of pixels."),
    rules: Path = typer.Option(None, "--rules", help="spectral: a rules TOML replacing models/spectral.toml."),
    cloud_mask: bool = typer.Option(True, "--cloud-mask/--no-cloud-mask",
                                    help="spectral: leave cloudy pixels out of the measures."),
    timeout: float = typer.Option(60.0, "--timeout", help="Remote inputs: seconds to wait for each HTTP answer."),
    retries: int = typer.Option(4, "--retries", help="Remote inputs: retries on connection errors, 429 and 5xx."),
    backoff: float = typer.Option(1.0, "--backoff", help="Remote inputs: first retry delay (s), doubled each time."),
    quiet: bool = QuietOption,
    verbose: int = VerboseOption,
) -> None:
    """Answer a question about a scene; write answer.md, masks/*.tif (COG), masks.geojson, answer.json.

    Measurable questions (coverage, area, ...) are answered with either backend; free-form and
    multiple-choice questions are answered by the TerraScope model (--backend terrascope).
    """
    command_logging(quiet, verbose)
    from tscope.ask import ask
    from tscope.geo.scene import ReadOptions

    if len(args) < 2:
        raise InputError("give a scene and a question: tscope ask SCENE.tif \"What % is forest?\"")
    if len(args) > 3:
        raise InputError("give at most two scenes (before, after) and one question; quote the question")
    *scenes, question = args
    from tscope.geo.remote import is_remote, looks_like_item
    from tscope.stac.http import NetworkPolicy, gdal_env

    policy = NetworkPolicy(timeout=timeout, connect_timeout=min(timeout, 10.0), retries=retries, backoff=backoff)
    read_options = ReadOptions(bands=bands, sensor=sensor, l2a_offset=l2a_offset, sar_format=sar_format.value,
                               nodata=nodata, assume_crs=assume_crs, gsd=gsd, network=policy)
    if backend is not Backend.terrascope:
        # Accepting them silently would let a user believe a quantised VLM answered.
        given = [name for name, value, default in (("--model", model, None), ("--quant", quant.value, "none"),
                                                   ("--dtype", dtype.value, "bf16"), ("--device", device, "auto"))
                 if value != default]
        if given:
            raise InputError(f"{', '.join(given)} apply to --backend terrascope only"
                             f" (this is --backend {backend.value})")
    remote = any(is_remote(s) or looks_like_item(s) for s in scenes)
    if backend is Backend.terrascope:
        if model is None:
            raise InputError("--backend terrascope needs --model DIR (a TerraScope checkpoint folder)")
        options = dict(model=model, quant=quant.value, dtype=dtype.value, device=device, tile_overlap=tile_overlap,
                       tile_answers=tile_answers, batch_tiles=batch_tiles)
    else:
        options = dict(rules=str(rules) if rules else None, mask_clouds=cloud_mask)
    # Remote reads (GDAL's /vsicurl/, /vsis3/) get fetch's timeouts and retries.
    with gdal_env(policy) if remote else contextlib.nullcontext(), progress_bar("reasoning", quiet=quiet) as progress:
        trace = ask(scenes, question, backend=backend.value, backend_options=options, read_options=read_options,
                    out=out, overwrite=overwrite, progress=progress)
    if as_json:
        print_json(trace.to_dict() | {"out": trace.outputs.get("dir")})
    else:
        typer.echo(trace.answer)
        if not quiet:
            typer.echo(f"outputs: {trace.outputs.get('dir')}", err=True)
