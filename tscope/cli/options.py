"""Options and output helpers shared by every command (in the spirit of ``rio/options.py``)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from enum import StrEnum

import typer

Progress = Callable[[int, int], None]

log = logging.getLogger("tscope")



class Backend(StrEnum):
    spectral = "spectral"
    terrascope = "terrascope"


class Quant(StrEnum):
    none = "none"
    q8 = "8bit"
    q4 = "4bit"


class Dtype(StrEnum):
    bf16 = "bf16"
    fp16 = "fp16"
    fp32 = "fp32"


class SarFormat(StrEnum):
    auto = "auto"
    linear = "linear"
    db = "db"
    complex = "complex"


class StackMode(StrEnum):
    auto = "auto"
    stack = "stack"
    pair = "pair"


class Resampling(StrEnum):
    """GDAL resampling methods offered for reflectance and backscatter."""

    nearest = "nearest"
    bilinear = "bilinear"
    cubic = "cubic"
    cubic_spline = "cubic_spline"
    lanczos = "lanczos"
    average = "average"
    mode = "mode"
    min = "min"
    max = "max"
    med = "med"


JsonOption = typer.Option(False, "--json", help="Print the result as JSON on stdout (logs stay on stderr).")
OverwriteOption = typer.Option(False, "--overwrite", help="Replace existing outputs in --out.")
QuietOption = typer.Option(False, "--quiet", "-q", help="No progress bar; only errors on stderr.")
VerboseOption = typer.Option(0, "--verbose", "-v", count=True, show_default=False,
                             help="More log output on stderr (-vv: debug).")


def command_logging(quiet: bool, verbose: int) -> None:
    """A command's own -q/-v (as after ``tscope``): only errors, or more log lines, on stderr."""
    if quiet or verbose:
        setup_logging(-1 if quiet else verbose)


def setup_logging(verbosity: int) -> None:
    level = logging.WARNING - 10 * verbosity
    handler: logging.Handler
    if sys.stderr.isatty():
        from rich.logging import RichHandler

        handler = RichHandler(show_time=False, show_path=False)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("tscope: %(levelname)s: %(message)s"))
    logging.basicConfig(level=max(logging.DEBUG, level), handlers=[handler], force=True)
    route_library_messages(verbosity)


def route_library_messages(verbosity: int) -> None:
    """Library warnings, GDAL messages, transformers' logs and progress bars go to tscope's log.

    They explain, at best, why something failed: with ``-v`` they are shown, otherwise stderr keeps
    the one ``tscope: error:`` line (or nothing) whatever pyogrio, rasterio or transformers think.
    """
    shown = verbosity >= 1
    warnings.simplefilter("default" if shown else "ignore")
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").setLevel(logging.WARNING if shown else logging.CRITICAL)
    # rasterio/fiona log GDAL's CPLE messages (errors included, which they also raise) on these loggers.
    for name in ("rasterio", "fiona", "pyogrio", "odc", "distributed", "urllib3", "httpx", "pystac_client"):
        logging.getLogger(name).setLevel(logging.INFO if verbosity >= 2 else logging.WARNING if shown
                                         else logging.CRITICAL)
    # Read by Dask when imported, in the driver and in every worker process it starts.
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "info" if verbosity >= 2 else "warning" if shown else "error")
    # Read by transformers and huggingface_hub when (lazily) imported.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "info" if verbosity >= 2 else "warning" if shown else "error")
    if not shown:
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
        # GDAL prints to stderr itself whenever no rasterio error handler is active (e.g. in pyogrio).
        os.environ.setdefault("CPL_LOG", os.devnull)


def print_json(obj: object) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


@contextlib.contextmanager
def progress_bar(description: str, quiet: bool = False) -> Iterator[Progress | None]:
    """A rich progress bar on stderr when it is a terminal; nothing otherwise (CI, pipes)."""
    if quiet or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, TimeElapsedColumn, TimeRemainingColumn
    from rich.progress import Progress as RichProgress

    with RichProgress(
        "[progress.description]{task.description}", BarColumn(), "{task.completed}/{task.total}",
        TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True), transient=True,
    ) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


_TYPE_WORDS = {"int": "N", "float": "NUMBER", "str": "TEXT", "Path": "PATH", "path": "PATH", "file": "PATH",
               "directory": "DIR", "datetime": "DATETIME"}


def _type_word(label: str) -> str:
    label = label.strip("<>").removeprefix("list[").removesuffix("]")
    return _TYPE_WORDS.get(label, label.upper())


def plain_help_types() -> None:
    """Help shows what rio and stac-client show: nothing after a flag, a word (``N``, ``PATH``) or the
    choices after an option, an argument's own metavar; never a Python type name.

    Typer >= 0.2x renders ``<bool>``, ``<int>``, ``<list[str]>`` and ``{SCENE ...}...`` and offers no
    setting to turn that off, so its two display hooks are replaced here (older Typer releases lack
    them and print click's words, which are fine). ``tests/test_help.py`` checks every command.
    """
    from typer import core

    option, argument = getattr(core, "TyperOption", None), getattr(core, "TyperArgument", None)
    if option is None or argument is None or not hasattr(option, "display_type"):
        return
    if getattr(option, "_tscope_plain", False):
        return

    def option_type(self, ctx):  # noqa: ANN001, ANN202 - Typer's hook signature
        if self.metavar is not None:
            return self.metavar
        if self.is_flag or self.count:
            return ""
        if self.type_descriptor.is_choice:
            return self.display_type(ctx)
        return _type_word(self.display_type(ctx)) + ("..." if self.multiple else "")

    def argument_type(self, ctx):  # noqa: ANN001, ANN202
        if self.metavar is not None:
            return None
        return _type_word(self.display_type(ctx))

    def argument_usage(self):  # noqa: ANN001, ANN202
        if self.metavar is not None:
            return self.metavar if self.required else f"[{self.metavar}]"
        name = self.display_name_raw
        name = name if self.required else f"[{name}]"
        return name + ("..." if self.nargs != 1 else "")

    option.display_type_rich = option_type
    argument.display_type_rich = argument_type
    argument._usage_display_name = argument_usage
    argument._rich_display_name = lambda self: self.display_name_raw if self.metavar else (
        self.display_name_raw + ("..." if self.nargs != 1 else ""))
    option._tscope_plain = True


plain_help_types()
