"""The ``tscope`` entry point: global options, command registration, errors -> exit codes.

Each command lives in its own module of :mod:`tscope.cli` and exposes either ``command`` (a plain
function, registered as one command) or ``app`` (a Typer group of sub-commands). Command modules
import heavy libraries (torch, transformers, dask) only inside the functions that need them, so
``tscope --help`` and the spectral ``ask`` start fast.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import sys

import typer

from tscope import __version__
from tscope.cli.options import setup_logging
from tscope.errors import Interrupted, TscopeError

# name -> module; keep sorted by how users meet them.
COMMANDS = {
    "ask": "tscope.cli.ask",
    "fetch": "tscope.cli.fetch",
    "stack": "tscope.cli.stack",
    "batch": "tscope.cli.batch",
    "model": "tscope.cli.model",
    "data": "tscope.cli.data",
    "bench": "tscope.cli.bench",
    "train": "tscope.cli.train",
}

app = typer.Typer(
    name="tscope",
    help="Pixel-grounded reasoning over Earth-observation imagery (TerraScope).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"tscope {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, show_default=False,
                                help="More log output on stderr (-vv: debug)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only errors on stderr."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """Pixel-grounded reasoning over Earth-observation imagery."""
    setup_logging(-1 if quiet else verbose)


for _name, _module in COMMANDS.items():
    _mod = importlib.import_module(_module)
    if hasattr(_mod, "app"):
        app.add_typer(_mod.app, name=_name)
    else:
        app.command(_name)(_mod.command)


def _one_line(message: object) -> str:
    """Library messages (YAML, GDAL) span lines; the error is always one line."""
    return " ".join(str(message).split())


def _interrupt(signum: int, _frame: object) -> None:
    raise Interrupted(signum)


def run(argv: list[str] | None = None) -> int:
    """Console-script entry: one line on stderr for any failure, and the exit code that says why."""
    debug = bool(os.environ.get("TSCOPE_DEBUG"))
    # Scenes are read once, window by window, each read opening the file anew: GDAL's default block
    # cache (5% of RAM) would only add resident memory. 64 MB holds the blocks of the windows in flight
    # (four of 512² x 6 bands of uint16: 12 MB) and of a COG being written. Users can still set their own.
    os.environ.setdefault("GDAL_CACHEMAX", "64")
    # Ctrl-C and `kill` raise Interrupted, which Typer does not catch (it turns KeyboardInterrupt into
    # an exit code), so every command unwinds through its cleanup and ends here with 128 + signal.
    previous = {signum: signal.signal(signum, _interrupt) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = app(args=argv, prog_name="tscope", standalone_mode=False)
        return code if isinstance(code, int) else 0
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        print("tscope: error: aborted", file=sys.stderr)
        return 130
    except typer.TyperException as exc:
        # Typer's (vendored) click usage errors: bad options, missing arguments.
        if type(exc).__name__ == "NoArgsIsHelpError":
            exc.show()
            return 2
        ctx = getattr(exc, "ctx", None)
        hint = f" (see {ctx.command_path} --help)" if ctx is not None else ""
        print(f"tscope: error: {_one_line(exc.format_message())}{hint}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
    except TscopeError as exc:
        if debug:
            logging.getLogger("tscope").exception("failed")
        print(f"tscope: error: {_one_line(exc)}", file=sys.stderr)
        return exc.exit_code
    except (Interrupted, KeyboardInterrupt) as exc:
        signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
        print(f"tscope: error: interrupted by {signal.Signals(signum).name}", file=sys.stderr)
        return 128 + signum
    except Exception as exc:  # noqa: BLE001 - the CLI's last line of defence: one line, exit 1
        if debug:
            raise
        print(f"tscope: error: {type(exc).__name__}: {_one_line(exc)} (set TSCOPE_DEBUG=1 for a traceback)",
              file=sys.stderr)
        return 1
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def entry() -> None:
    sys.exit(run())
