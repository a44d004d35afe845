"""``--config scenetag.toml`` and ``$SCENETAG_CONFIG``: option defaults from a file, through the CLI.

Explicit options win; the ``runs`` table records the effective options and
what the file gave; a bad file is one line naming the file and the key (exit 2).
"""

from __future__ import annotations

import hashlib
import shutil

import pytest
from click.testing import CliRunner

from cli import main
from scenetag.config_file import CONFIG_ENV
from scenetag.outputs_schema.run_record import read_run_record


def cli(*args, env=None):
    return CliRunner().invoke(main, [str(a) for a in args], env=env, catch_exceptions=False)


@pytest.fixture
def scene(make_raster):
    return make_raster("scene.tif", width=200, height=140)


def write(path, text):
    path.write_text(text)
    return path


def test_file_supplies_defaults_explicit_options_win_and_runs_records_both(tiny_model, scene, tmp_path):
    shutil.copy(tiny_model, tmp_path / "model.onnx")
    config = write(tmp_path / "scenetag.toml", '[run]\nmodel = "model.onnx"\nmin-valid = 0.25\nedge = "pad"\n'
                   "progress = false\n[batch]\nworkers = 3\n")
    out = tmp_path / "a.gpkg"
    res = cli("--config", config, "run", scene, "-o", out, "--edge", "skip")
    assert res.exit_code == 0, res.output
    run = read_run_record(out)
    # model (a relative path, taken from the file's folder) and min-valid from the file; --edge from the command line.
    assert run.model_sha256 == hashlib.sha256((tmp_path / "model.onnx").read_bytes()).hexdigest()
    assert run.options["min_valid"] == 0.25 and run.options["edge"] == "skip"
    assert run.config["path"] == str(config) and len(run.config["sha256"]) == 64
    assert run.config["options"] == {"model": str(tmp_path / "model.onnx"), "min-valid": 0.25, "progress": False}


def test_environment_variable_names_the_file_and_a_command_level_config_wins(tiny_model, scene, tmp_path):
    env_file = write(tmp_path / "env.toml", "[run]\nmin-valid = 0.2\nstride = 32\n")
    given = write(tmp_path / "given.toml", "[run]\nmin-valid = 0.4\n")
    out = tmp_path / "env.gpkg"
    res = cli("run", scene, "-o", out, "-m", tiny_model, "--no-progress", env={CONFIG_ENV: str(env_file)})
    assert res.exit_code == 0, res.output
    run = read_run_record(out)
    assert (run.options["min_valid"], run.options["stride"]) == (0.2, 32)
    assert run.config["path"] == str(env_file)
    out = tmp_path / "given.gpkg"
    res = cli("run", scene, "-o", out, "-m", tiny_model, "--no-progress", "--config", given,
              env={CONFIG_ENV: str(env_file)})
    assert res.exit_code == 0, res.output
    run = read_run_record(out)
    assert run.options["min_valid"] == 0.4 and run.options["stride"] is None  # only the given file counts
    assert run.config["options"] == {"min-valid": 0.4}


def test_without_a_file_runs_records_no_config(tiny_model, scene, tmp_path):
    out = tmp_path / "plain.gpkg"
    res = cli("run", scene, "-o", out, "-m", tiny_model, "--no-progress", env={CONFIG_ENV: ""})
    assert res.exit_code == 0, res.output
    assert read_run_record(out).config == {}


@pytest.mark.parametrize("text, names", [
    ("[bach]\nworkers = 3\n", ["[bach]", "is not a scenetag command", "batch"]),
    ("[batch]\nworkerz = 3\n", ["[batch]", "'workerz'", "scenetag batch --help"]),
    ("[batch]\nno-progress = true\n", ["'no-progress'", "progress = false"]),
    ("[batch]\nworkers = \"four\"\n", ["[batch]", "workers = 'four'", "--workers", "not a valid integer"]),
    ("[run]\nbands = [3, 2, 1]\n", ["[run]", "bands = [3, 2, 1]", "--bands takes one value"]),
    ("[run]\nbands = \"0,1\"\n", ["bands = '0,1'", "1-based"]),
    ("[run]\nmin-valid = 2.0\n", ["min-valid = 2.0", "--min-valid"]),
    ("[run]\nspec = \"missing.json\"\n", ["spec = ", "missing.json", "does not exist"]),
    ("workers = 3\n", ["workers = 3", "outside any table"]),
    ("[run\n", ["not valid TOML"]),
    ("[run]\nedge = \"pad\"\nedge = \"skip\"\n", ["not valid TOML"]),
    ("[run]\nmin-valid = 0.3\nmin_valid = 0.4\n", ["'min_valid'", "a second time"]),
])
def test_bad_config_is_one_line_naming_the_file_and_the_key(tmp_path, scene, text, names):
    config = write(tmp_path / "bad.toml", text)
    for args in (["--config", config, "run", scene], ["run", scene, "--config", config]):
        res = cli(*args)
        assert res.exit_code == 2, res.output
        lines = res.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"Error: config {config}"), res.output
        for name in names:
            assert name in lines[0], (name, lines[0])
    assert not list(tmp_path.glob("*.gpkg"))


def test_unreadable_config_is_one_line(tmp_path, scene):
    for path in (tmp_path / "absent.toml", tmp_path):
        res = cli("run", scene, env={CONFIG_ENV: str(path)})
        assert res.exit_code == 2, res.output
        lines = res.output.strip().splitlines()
        assert len(lines) == 1 and f"config {path}" in lines[0] and "cannot be read" in lines[0], res.output
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b"[run]\nto-crs = \"\xe9\"\n")
    res = cli("--config", bad, "run", scene)
    assert res.exit_code == 2 and "not valid TOML" in res.output, res.output


def test_help_shows_the_files_values_as_defaults(tmp_path):
    config = write(tmp_path / "c.toml", "[batch]\nretries = 4\n")
    res = cli("--config", config, "batch", "--help")
    assert res.exit_code == 0, res.output
    assert "[default: 4; x>=0]" in " ".join(res.output.split())
    assert "--config FILE" in res.output
