"""``tscope model convert SRC DST`` and ``tscope model info DIR``: TerraScope checkpoints."""

from __future__ import annotations

from pathlib import Path

import typer

from tscope.cli.options import JsonOption, OverwriteOption, print_json

app = typer.Typer(help="TerraScope checkpoints: convert the released layout, inspect one.", no_args_is_help=True)


@app.command("convert")
def convert(
    src: Path = typer.Argument(..., help="Checkpoint folder: released sy1998/TerraScope copy or tscope layout."),
    dst: Path = typer.Argument(..., help="Output folder (tscope native layout)."),
    overwrite: bool = OverwriteOption,
    as_json: bool = JsonOption,
) -> None:
    """Write SRC in tscope's native layout (safetensors, no remote code) at DST."""
    from tscope.model.loading import convert as convert_checkpoint

    out = convert_checkpoint(src, dst, overwrite=overwrite)
    if as_json:
        print_json({"src": str(src), "dst": str(out)})
    else:
        typer.echo(str(out))


@app.command("info")
def info(
    path: Path = typer.Argument(..., help="Checkpoint folder (either layout)."),
    as_json: bool = JsonOption,
) -> None:
    """Print the architecture, parameter counts per part, stored dtype and the quantisation plan."""
    from tscope.model.loading import model_info

    data = model_info(path)
    if as_json:
        print_json(data)
        return
    typer.echo(f"{data['path']}: {data['layout']} layout ({data['format']})")
    for part, text in data["architecture"].items():
        typer.echo(f"  {part}: {text}")
    typer.echo("parameters:")
    for part, count in data["parameters"].items():
        typer.echo(f"  {part}: {count:,}")
    typer.echo("stored dtypes: " + ", ".join(f"{k} {v:,}" for k, v in data["stored_dtypes"].items()))
    q = data["quantisation"]
    typer.echo(f"--quant 4bit/8bit quantises {q['quantised']}; keeps {q['kept']}")
    typer.echo("estimated weight memory: " + ", ".join(f"{k} {v / 2**30:.2f} GiB"
                                                      for k, v in q["estimated_weight_bytes"].items()))
