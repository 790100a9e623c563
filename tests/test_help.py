"""Every command's --help reads like rio's and stac-client's: no Python type names, closed sets as choices."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from tscope.cli.main import app

COMMANDS = [[], ["ask"], ["fetch"], ["stack"], ["batch"], ["model"], ["model", "convert"], ["model", "info"],
            ["data"], ["data", "synth"], ["data", "res"], ["bench"], ["bench", "build"], ["bench", "eval"],
            ["train"], ["train", "stage1"], ["train", "stage2"]]
RAW = re.compile(r"<(bool|int|float|str|path|Path|list\[[^]]*\]|tuple[^>]*)>|\{[A-Z][^}]*\}\.\.\.|\[default: None")


def help_text(args: list[str]) -> str:
    result = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: " ".join(a) or "tscope")
def test_help_has_no_raw_type_names(args):
    text = help_text(args)
    assert not RAW.search(text), RAW.search(text).group(0)


def test_closed_sets_are_choices_and_flags_pair():
    ask = help_text(["ask"])
    assert "spectral|terrascope" in ask and "none|8bit|4bit" in ask and "bf16|fp16|fp32" in ask
    assert "auto|linear|db|complex" in ask
    assert "--cloud-mask" in ask and "--no-cloud-mask" in ask and "-v" in ask and "-q" in ask
    fetch = help_text(["fetch"])
    assert "nearest|bilinear" in fetch and "--collections" in fetch and "-c" in fetch
    assert "MINX MINY MAXX MAXY" in fetch
    assert "auto|stack|pair" in help_text(["stack"])
    assert "Please segment the CLASS." in help_text(["data"])
    assert re.search(r"--quiet\s+-q", help_text(["train", "stage1"]))
