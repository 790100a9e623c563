"""``tscope stack A.tif B.tif --out DIR``: optical + SAR, or a pre/post pair, aligned onto one grid."""

from __future__ import annotations

from pathlib import Path

import typer

from tscope.cli.options import JsonOption, OverwriteOption, Resampling, SarFormat, StackMode, print_json


def command(
    scenes: list[Path] = typer.Argument(..., metavar="SCENE SCENE2",
                                        help="Optical and SAR scenes, or a before and an after scene."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: stack.tif, or t1.tif + t2.tif; stack.json."),
    mode: StackMode = typer.Option(StackMode.auto, "--mode", help="auto: optical+SAR -> stack, else a pair."),
    crs: str = typer.Option(None, "--crs", help="Target CRS (default: the first scene's; optical for a stack)."),
    resolution: float = typer.Option(None, "--resolution", help="Target pixel size in CRS units."),
    resampling: Resampling = typer.Option(Resampling.bilinear, "--resampling",
                                          help="Optical reflectance resampling."),
    sar_resampling: Resampling = typer.Option(Resampling.average, "--sar-resampling",
                                       help="SAR resampling, on linear power (average conserves energy)."),
    bands: str = typer.Option(None, "--bands", help="Band names in file order for inputs without descriptions."),
    sensor: str = typer.Option(None, "--sensor", help="Band preset for inputs: s2-l2a, s2-l1c, rgb, s1..."),
    l2a_offset: bool = typer.Option(False, "--l2a-offset/--no-l2a-offset",
                                    help="Subtract the Sentinel-2 baseline-04.00 offset, unless the file declares it."),
    sar_format: SarFormat = typer.Option(SarFormat.auto, "--sar-format", help="How SAR values are stored."),
    nodata: float = typer.Option(None, "--nodata", help="Nodata value of the inputs, overriding theirs."),
    assume_crs: str = typer.Option(None, "--assume-crs", help="CRS for inputs that have none."),
    overwrite: bool = OverwriteOption,
    as_json: bool = JsonOption,
) -> None:
    """Align two scenes onto one grid; write COGs that `tscope ask` reads directly."""
    from tscope.geo.scene import ReadOptions
    from tscope.geo.stack import StackOptions, stack_scenes

    options = StackOptions(crs=crs, resolution=resolution, resampling=resampling.value,
                           sar_resampling=sar_resampling.value, mode=mode.value)
    read_options = ReadOptions(bands=bands, sensor=sensor, l2a_offset=l2a_offset, sar_format=sar_format.value,
                               nodata=nodata, assume_crs=assume_crs)
    result = stack_scenes(scenes, out, options, read_options, overwrite=overwrite)
    if as_json:
        print_json(result.to_dict())
        return
    g = result.grid
    typer.echo(f"{result.mode}: {', '.join(str(f) for f in result.files)} ({g.width} x {g.height} px,"
               f" {g.crs.to_string()}, {abs(g.transform.a):g} units/px)")
