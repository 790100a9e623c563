"""Options and output helpers shared by every command (in the spirit of ``rio/options.py``)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator

import typer

Progress = Callable[[int, int], None]

log = logging.getLogger("tscope")

JsonOption = typer.Option(False, "--json", help="Print the result as JSON on stdout (logs stay on stderr).")
OverwriteOption = typer.Option(False, "--overwrite", help="Replace existing outputs in --out.")


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
