"""The model commands (train, evaluate, calibrate, export) as a user sees them: options, help, outputs."""

from __future__ import annotations

import json

import click
import pytest
from click.testing import CliRunner

from scenetag.commands import calibrate, evaluate, export, train
from scenetag.commands.options import parse_thresholds
from scenetag.errors import DataError

COMMANDS = {"train": train.command, "evaluate": evaluate.command, "calibrate": calibrate.command,
            "export": export.command}


def options_of(name: str):
    return [p for p in COMMANDS[name].params if isinstance(p, click.Option)]


def test_export_has_no_device_option():
    """It traces and compares on the CPU (tests/test_cli.py checks --device defaults to auto elsewhere)."""
    assert not [p for p in options_of("export") if p.name == "device"]


@pytest.mark.parametrize("name, names", [
    ("calibrate", {"-o", "--output", "--out"}),
    ("export", {"-o", "--output", "--out"}),
    ("evaluate", {"-o", "--output", "--out", "--json-out"}),
    ("train", {"-d", "--out-dir", "--out"}),
])
def test_outputs_are_named_the_same_in_every_command(name, names):
    (opt,) = [p for p in options_of(name) if p.name in ("output", "out_dir")]
    assert set(opt.opts) == names


def test_help_lists_the_registered_backends():
    res = CliRunner().invoke(evaluate.command, ["--help"])
    from scenetag.model.backends import backend_names

    assert res.exit_code == 0 and "[" + "|".join(backend_names()) + "]" in res.output


@pytest.mark.parametrize("text, expected", [("0.3", 0.3), (" clear=0.4,haze=0.1 ", {"clear": 0.4, "haze": 0.1}),
                                            (None, None)])
def test_parse_thresholds(text, expected):
    assert parse_thresholds(text) == expected


def test_parse_thresholds_names_the_bad_text():
    with pytest.raises(DataError, match="'clear=high'"):
        parse_thresholds("clear=high")


@pytest.fixture
def labelled(tmp_path):
    """Eight generated 64 px chips and their labels (the tiny model's), as train's layout."""
    from tests.model_fixtures import TINY_LABELS, generated_chips

    return generated_chips(tmp_path, lambda i: TINY_LABELS[i % 4])


def test_evaluate_writes_its_json_output_and_refuses_to_replace_it_without_overwrite(tiny_model, labelled,
                                                                                        tmp_path):
    out = tmp_path / "e.json"
    args = [str(tiny_model), str(labelled), "--split", "all", "--format", "json", "-o", str(out)]
    first = CliRunner().invoke(evaluate.command, args)
    assert first.exit_code == 0, first.output
    written = json.loads(out.read_text())
    assert written == json.loads(first.stdout) and written["split"] == "all"
    out.write_text("mine")
    again = CliRunner().invoke(evaluate.command, args)
    assert again.exit_code != 0 and "pass --overwrite" in again.output
    assert out.read_text() == "mine"
    replaced = CliRunner().invoke(evaluate.command, [*args, "--overwrite"])
    assert replaced.exit_code == 0 and json.loads(out.read_text()) == written
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left
