"""The command line as a whole: every command's options named, documented and defaulted alike."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from scenetag.cli import COMMANDS, main
from tests.conftest import real_scene


def command(name: str) -> click.Command:
    cmd = main.get_command(click.Context(main), name)
    assert cmd is not None, name
    return cmd


def options_of(name: str) -> list[click.Option]:
    return [p for p in command(name).params if isinstance(p, click.Option)]


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_option_of_every_command_has_help(name):
    missing = [p.opts[0] for p in options_of(name) if not p.hidden and not (p.help or "").strip()]
    assert missing == [], f"{name}: options without help: {missing}"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_verbosity_is_accepted_after_every_command(name):
    opts = {o for p in options_of(name) for o in p.opts}
    assert {"-v", "--verbose", "-q", "--quiet"} <= opts


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_the_same_thing_has_the_same_name(name):
    by_name = {p.name: p for p in options_of(name)}
    if "device" in by_name:
        assert by_name["device"].default == "auto"
    if "output" in by_name:  # a file a command writes
        assert {"-o", "--output"} <= set(by_name["output"].opts)
    if "out_dir" in by_name:  # a folder a command writes into
        assert {"-d", "--out-dir"} <= set(by_name["out_dir"].opts)
    if "backend" in by_name:
        assert list(by_name["backend"].type.choices)[0] == "auto"


def test_reader_choices_are_the_reader_modes():
    from scenetag.tiler.feed import ReaderMode

    (reader,) = [p for p in options_of("run") if p.name == "reader"]
    assert list(reader.type.choices) == [m.value for m in ReaderMode]


def test_verbosity_counts_the_same_before_and_after_the_command(tmp_path):
    scene = real_scene("landsat7_rgb_byte.tif")  # 300 m for a 3 m model: warned about
    runner = CliRunner()

    def stderr(*flags_before, after=()):
        out = tmp_path / f"{len(list(tmp_path.iterdir()))}.gpkg"
        res = runner.invoke(main, [*flags_before, "run", str(scene), "-o", str(out), "--no-progress", *after])
        assert res.exit_code == 0, res.output
        return res.stderr

    default = stderr()
    assert "INFO" in default and "x coarser" in default
    assert "INFO" not in stderr(after=["-q"]) and "x coarser" in stderr(after=["-q"])
    assert stderr(after=["-qq"]) == "" == stderr("-q", after=["-q"])
    assert "DEBUG" in stderr(after=["-v"])


def test_commands_do_not_import_each_other():
    import ast

    from tests.conftest import ROOT

    for path in (ROOT / "scenetag" / "commands").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("scenetag.commands."):
                assert node.module == "scenetag.commands.options", f"{path.name} imports {node.module}"
