"""Shared fixtures: paths to the real sample scenes shipped in tests/data and examples/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
EXAMPLES = ROOT / "examples"


@pytest.fixture(scope="session")
def slovenia() -> Path:
    """Sentinel-2 L1C, 13 bands, clear (2015-08-20), EPSG:32633, 100 x 101 px."""
    return EXAMPLES / "slovenia_s2.tif"


@pytest.fixture(scope="session")
def slovenia_hazy() -> Path:
    return DATA / "slovenia_s2_hazy.tif"


@pytest.fixture(scope="session")
def slovenia_t2() -> Path:
    return DATA / "slovenia_s2_t2.tif"


@pytest.fixture(scope="session")
def slovenia_lulc() -> Path:
    return DATA / "slovenia_lulc.tif"


@pytest.fixture(scope="session")
def joplin_pair() -> tuple[Path, Path]:
    return EXAMPLES / "joplin_pre.tif", EXAMPLES / "joplin_post.tif"


@pytest.fixture(scope="session")
def naip() -> Path:
    return DATA / "naip_rgbn.tif"


@pytest.fixture(scope="session")
def sar() -> Path:
    return DATA / "rotterdam_sar.tif"


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the installed CLI as a user would, in a fresh interpreter."""
    return subprocess.run([sys.executable, "-m", "tscope", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)
