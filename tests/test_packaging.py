"""The package list in pyproject.toml matches the packages on disk (a clean install builds exactly these)."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_is_listed_and_exists():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    mapped = config.get("package-dir", {})
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "tscope").rglob("__init__.py")}
    assert on_disk <= listed, f"not listed in pyproject.toml: {sorted(on_disk - listed)}"
    for name in listed:
        folder = ROOT / mapped.get(name, name.replace(".", "/"))
        assert (folder / "__init__.py").is_file(), f"{name} is listed but {folder} is not a package"


def test_rules_ship_with_the_package():
    from importlib import resources

    files = {f.name for f in resources.files("tscope.rules").iterdir()}
    assert {"spectral.toml", "classes.toml", "sensors.toml"} <= files
