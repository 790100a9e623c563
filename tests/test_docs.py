"""Every command example in README.md and docs/*.md runs as written, unless it needs the internet, a GPU
or the released model, so the docs cannot drift from the CLI.

Examples are the lines of ``bash``/``sh``/``console`` blocks (``$``-prefixed in console blocks, the
lines after them being the expected output) and inline code that is a whole command line (a program
and at least one argument, no placeholder such as ``SCENE``, ``DIR``, ``[--opt]``, ``a|b`` or ``...``).
Each document's examples run in order, in one scratch folder that holds the repository's data (so a
``tscope bench build`` feeds the ``tscope bench eval`` after it).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT

DOCUMENTS = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]
GROUPS = ("model", "data", "bench", "train")  # tscope commands with sub-commands
PROGRAMS = ("tscope", "python", "python3", "accelerate", "torchrun")
# Examples that cannot run here, and why. Each must still match an example (checked below).
NOT_HERE = [
    (r"pip install", "installs packages from the internet"),
    (r"-m pytest", "the test suite itself"),
    (r"^tscope model info /models/", "needs the released TerraScope checkpoint (a download)"),
    (r"--backend terrascope", "needs the TerraScope model weights (a download) and, at full size, a GPU"),
    (r"^accelerate launch", "multi-GPU training"),
    (r"^(CUDA_VISIBLE_DEVICES=\S+ )?dask (scheduler|worker)\b", "starts a Dask cluster on GPU machines"),
    (r"^python benchmarks/model_latency\.py$", "the real-size model benchmark needs a GPU"),
    (r"^python benchmarks/cloud_models\.py\b", "needs the clouds extra's trained U-Nets (a ~150 MB download)"),
    (r"^python benchmarks/(scene_scale|fetch_memory|train_mask_loss)\.py\b",
     "a benchmark (full-size scenes or training runs: minutes and GiBs); its numbers are quoted with the command"),
]
# Examples that need something downloaded first: the test puts a stand-in in its place, then runs the rest.
STAND_INS = {
    r"^tscope model convert /models/TerraScope checkpoints/terrascope-init$": "tiny-model",
}
# Examples that name a file the prose says how to make: the test makes it, then runs the example as written.
PREPARE = {r"^tscope ask joplin\.png ": "joplin-png"}
PLACEHOLDER = re.compile(r"\[|\||\.\.\.|…|(?<![\w/.-])[A-Z][A-Z0-9_]{1,}(?:\.\w+)?(?![\w:-])")


@dataclass
class Example:
    document: str
    line: int
    command: str
    output: list[str]


def _is_command(text: str) -> bool:
    """A whole command line: ``tscope`` with a command and an argument, or another program with an
    argument ("tscope ask" or "tscope data synth / res" only name a command)."""
    words = text.split()
    if not words or not (words[0] in PROGRAMS or words[0].startswith(".venv/bin/")) or PLACEHOLDER.search(text) \
            or " / " in text:
        return False
    if words[0] != "tscope":
        return len(words) >= 2
    return len(words) >= (4 if len(words) > 1 and words[1] in GROUPS else 3)


def examples(document: str) -> list[Example]:
    text = (ROOT / document).read_text(encoding="utf-8")
    found: list[Example] = []
    fences = list(re.finditer(r"^```(\w*)\n(.*?)^```", text, re.M | re.S))
    for fence in fences:
        lang, body = fence.group(1), fence.group(2)
        first = text[: fence.start(2)].count("\n") + 1
        if lang not in ("bash", "sh", "shell", "console"):
            continue
        lines = body.replace("\\\n", " ").splitlines()  # a continued line is one command
        for i, line in enumerate(lines):
            if lang == "console":
                if line.startswith("$ "):
                    found.append(Example(document, first + i, line[2:].strip(), []))
                elif found and found[-1].document == document and line.strip():
                    found[-1].output.append(line)
            elif line.strip() and not line.lstrip().startswith("#"):
                found.append(Example(document, first + i, line.strip(), []))
    prose = text
    for fence in fences:
        prose = prose.replace(fence.group(0), "\n" * fence.group(0).count("\n"))
    for match in re.finditer(r"`([^`\n]+)`", prose):
        if _is_command(match.group(1)):
            found.append(Example(document, prose[: match.start()].count("\n") + 1, match.group(1), []))
    return sorted(found, key=lambda e: e.line)


def reason_not_here(command: str) -> str | None:
    return next((why for pattern, why in NOT_HERE if re.search(pattern, command)), None)


def test_examples_are_found_and_every_exclusion_is_used():
    every = [e for d in DOCUMENTS for e in examples(d)]
    commands = [e.command for e in every]
    assert any(c.startswith("tscope ask examples/slovenia_s2.tif") for c in commands)
    assert any(c.startswith("tscope bench eval") for c in commands)
    assert any(c.startswith("tscope train stage1 --config train/stage1.yaml") for c in commands)
    for pattern, why in NOT_HERE + [(p, s) for p, s in STAND_INS.items()]:
        assert any(re.search(pattern, c) for c in commands), f"{pattern!r} ({why}) matches no example any more"
    runnable = [c for c in commands if reason_not_here(c) is None]
    assert len(runnable) >= 6, runnable


def _scratch(tmp_path: Path) -> tuple[Path, dict]:
    """A folder that looks like the project root to the examples, and an environment whose ``tscope``
    is this checkout's CLI."""
    work = tmp_path / "project"
    work.mkdir()
    for name in ("examples", "tests", "models", "benchmarks"):
        if (ROOT / name).exists():
            (work / name).symlink_to(ROOT / name)
    shutil.copytree(ROOT / "train", work / "train")  # recipes resolve ../ against their own folder
    bindir = tmp_path / "bin"
    bindir.mkdir()
    launcher = bindir / "tscope"
    launcher.write_text(f"#!/bin/sh\nexec {sys.executable} -m tscope \"$@\"\n")
    launcher.chmod(0o755)
    for name in ("python", "python3"):  # a wrapper, not a link: a linked venv python loses its packages
        (bindir / name).write_text(f"#!/bin/sh\nexec {sys.executable} \"$@\"\n")
        (bindir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT), "COLUMNS": "120"}
    return work, env


def _stand_in(kind: str, work: Path) -> None:
    if kind == "joplin-png":  # "examples/joplin_pre.tif saved as a PNG"
        import rasterio

        with rasterio.open(ROOT / "examples" / "joplin_pre.tif") as src:
            rgb = src.read([1, 2, 3])
        with rasterio.open(work / "joplin.png", "w", driver="PNG", width=rgb.shape[2], height=rgb.shape[1],
                           count=3, dtype=rgb.dtype) as dst:
            dst.write(rgb)
    if kind == "tiny-model":
        sys.path.insert(0, str(ROOT / "tests"))
        from tiny_terrascope import write_native

        write_native(work / "checkpoints" / "terrascope-init")


@pytest.mark.parametrize("document", [d for d in DOCUMENTS if any(
    reason_not_here(e.command) is None for e in examples(d))])
def test_document_examples_run_as_written(document, tmp_path):
    work, env = _scratch(tmp_path)
    ran = 0
    for example in examples(document):
        if reason_not_here(example.command):
            continue
        stand_in = next((kind for pattern, kind in STAND_INS.items() if re.search(pattern, example.command)), None)
        if stand_in:
            _stand_in(stand_in, work)
            continue
        prepare = next((kind for pattern, kind in PREPARE.items() if re.search(pattern, example.command)), None)
        if prepare:
            _stand_in(prepare, work)
        result = subprocess.run(["bash", "-c", example.command], cwd=work, env=env, capture_output=True, text=True,
                                timeout=600)
        where = f"{example.document}:{example.line}: {example.command}"
        assert result.returncode == 0, f"{where}\n{result.stderr[-2000:]}"
        for expected in example.output:
            assert expected.strip() in result.stdout, f"{where}: printed {result.stdout!r}, the doc says {expected!r}"
        ran += 1
    assert ran
    if document == "README.md":
        _readme_bench_row_is_current(work)


def _readme_bench_row_is_current(work: Path) -> None:
    """The README's benchmark row is the report its bench commands just wrote."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    row = next(line for line in readme.splitlines() if line.startswith("| spectral |"))
    report = (work / "spectral" / "report.md").read_text(encoding="utf-8")
    assert row in report.splitlines(), f"README says {row!r}; the bench gives {report.splitlines()[4]!r}"
