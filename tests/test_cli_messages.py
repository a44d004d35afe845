"""Messages that send people the right way: only the printing command's options, GDAL once, bands said.

Each error case is triggered through the CLI, and every ``--option`` its
output names is checked against that command's own parameters.  A static
check adds that every option named by any message in the code belongs to
some command (a renamed or removed option leaves no stale advice behind).
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys

import pyogrio
import pytest
from affine import Affine

from cli import main
from tests.cli_helpers import invoke, only_files
from tests.conftest import ROOT, real_scene

#: An option as messages name it: ``--word`` not inside a longer word or path.
OPTION = re.compile(r"(?<![\w/.-])--[a-z][a-z0-9]*(?:-[a-z0-9]+)*")


def command_options(name: str) -> set[str]:
    """The long options of command ``name`` (with a group's, e.g. ``spec``, those of its subcommands)."""
    command = main.get_command(None, name)
    commands = [command, *getattr(command, "commands", {}).values()]
    return {o for c in commands for p in c.params
            for o in (*getattr(p, "opts", ()), *getattr(p, "secondary_opts", ())) if o.startswith("--")} | {"--help"}


def assert_names_own_options(name: str, text: str) -> set[str]:
    named = set(OPTION.findall(text))
    foreign = named - command_options(name)
    assert not foreign, f"`{name}` printed options it does not have: {sorted(foreign)}\n{text}"
    return named


def library_messages() -> dict[str, set[str]]:
    """Every string literal (f-string parts too) in the code that names an option: option → files."""
    found: dict[str, set[str]] = {}
    folders = ["scenetag", "jobs", "tiler", "model", "outputs_schema"]
    for path in sorted(p for f in folders for p in (ROOT / f).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                for option in OPTION.findall(node.value):
                    found.setdefault(option, set()).add(str(path.relative_to(ROOT)))
    return found


#: Options named in the code that are not scenetag's: other programs' (``dask worker --resources``).
OTHER_PROGRAMS = {"--resources"}


def test_every_option_a_message_names_belongs_to_some_command():
    ours = set().union(*(command_options(name) for name in main.list_commands(None)))
    stale = {o: files for o, files in library_messages().items() if o not in ours | OTHER_PROGRAMS}
    assert not stale, f"messages name options no command has: {stale}"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A plain state dict of the tiny model's network: a checkpoint that carries no spec."""
    import torch

    from tests.model_fixtures import small_model, tiny_spec

    path = tmp_path_factory.mktemp("ckpt") / "plain.ckpt"
    torch.save(small_model(tiny_spec()).state_dict(), path)
    return path


def test_run_with_a_checkpoint_without_spec_names_only_runs_options(checkpoint, tmp_path):
    scene = real_scene("landsat7_rgb_byte.tif")
    res = invoke("run", scene, "-o", tmp_path / "o.gpkg", "--model", checkpoint)
    assert res.exit_code == 1
    assert assert_names_own_options("run", res.output) == {"--spec"}, res.output
    res = invoke("batch", scene, "-d", tmp_path / "b", "--model", checkpoint)
    assert res.exit_code == 1 and assert_names_own_options("batch", res.output) == {"--spec"}, res.output
    # export takes --arch and --labels, and says so.
    res = invoke("export", checkpoint, "-o", tmp_path / "m.onnx")
    assert res.exit_code == 1
    assert {"--arch", "--labels", "--spec"} <= assert_names_own_options("export", res.output)


def test_run_with_a_spec_of_other_labels_names_spec_not_labels(checkpoint, tmp_path):
    from tests.model_fixtures import tiny_spec

    spec = tmp_path / "spec.json"
    spec.write_text(tiny_spec(labels=("a", "b")).to_json())
    res = invoke("run", real_scene("landsat7_rgb_byte.tif"), "-o", tmp_path / "o.gpkg", "--model", checkpoint,
                 "--spec", spec)
    assert res.exit_code == 1 and "5 labels the checkpoint was trained on" in res.output
    assert assert_names_own_options("run", res.output) == {"--spec"}, res.output


def coarse(make_raster):
    return make_raster("coarse.tif", transform=Affine(100.0, 0, 500000.0, 0, -100.0, 4000000.0))


@pytest.mark.parametrize("case", ["bands", "exists", "resample", "max_chips", "stride", "to_crs", "geojson",
                                  "folder"])
def test_run_errors_name_runs_options(tiny_model, make_raster, tmp_path, case):
    scene = coarse(make_raster)
    out = tmp_path / "o.gpkg"
    args, expect = {
        "bands": (["--bands", "1,2"], "--bands"),
        "exists": (["--no-progress"], "--overwrite"),
        "resample": (["--resample"], "--resample-max-factor"),
        "max_chips": (["--stride", "1", "--max-chips", "10"], "--max-chips"),
        "stride": (["--stride", "100"], "--overlap"),
        "to_crs": (["--to-crs", "EPSG:99999"], "--to-crs"),
        "geojson": (["-o", tmp_path / "o.geojson"], None),
        "folder": (["-o", tmp_path / "none" / "o.gpkg"], None),
    }[case]
    if case == "exists":
        out.write_bytes(b"kept")
    res = invoke("run", scene, "-o", out, "--model", tiny_model, *args)
    assert res.exit_code == 1, res.output
    [error] = [line for line in res.output.splitlines() if line.startswith("Error")]
    named = assert_names_own_options("run", error)
    assert expect in named if expect else True, error


def test_unsupported_output_format_is_refused_before_the_model_loads(tmp_path):
    # The shipped model: loading it logs "loaded ..."; the refusal comes first, so nothing is loaded.
    res = invoke("-v", "run", real_scene("landsat7_rgb_byte.tif"), "-o", tmp_path / "out.geojson")
    assert res.exit_code == 1
    assert "must end in .gpkg: scenetag writes GeoPackages" in res.stderr
    assert "loaded" not in res.stderr and "onnx" not in res.stderr.lower()
    assert only_files(tmp_path) == []


@pytest.mark.parametrize("case", ["report", "same_stem", "foreign", "not_scenetag"])
def test_batch_errors_name_batchs_options(tiny_model, make_raster, tmp_path, case):
    scene = coarse(make_raster)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    args = []
    if case == "report":
        args = ["--report", tmp_path / "no" / "report.json"]
    elif case == "same_stem":
        other = tmp_path / "other"
        other.mkdir()
        args = [other / "coarse.tif"]
        (other / "coarse.tif").write_bytes(scene.read_bytes())
    elif case == "foreign":  # an output made from another scene of the same name
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        twin = make_raster("elsewhere/coarse.tif", seed=3,
                           transform=Affine(100.0, 0, 500000.0, 0, -100.0, 4000000.0))
        assert invoke("run", twin, "-o", out_dir / "coarse.gpkg", "--model", tiny_model,
                      "--no-progress").exit_code == 0
        args = ["--dry-run"]  # the refusal is the same; the plan needs no cluster
    else:  # a file of that name that is no scenetag GeoPackage
        (out_dir / "coarse.gpkg").write_bytes(b"someone else's file")
        args = ["--dry-run"]
    res = invoke("batch", scene, *args, "-d", out_dir, "--model", tiny_model, "--no-progress", "--workers", "1")
    assert res.exit_code == 1, res.output
    named = assert_names_own_options("batch", res.output)
    assert {"report": "--report", "same_stem": "--out-dir", "foreign": "--force",
            "not_scenetag": "--force"}[case] in named, res.output


def cli(*args):
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True)


def test_gdal_warnings_are_logged_once_and_never_printed_raw(tiny_model, tmp_path):
    # This scene's TIFF directory makes GDAL warn at every open and at the first read of every handle.
    proc = cli("run", real_scene("landsat_pucallpa_2020_epsg4326.tif"), "-o", tmp_path / "p.gpkg", "--model",
               tiny_model, "--no-progress")
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "TIFFReadDirectory" in line]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("WARNING rasterio._env: ") and "landsat_pucallpa_2020_epsg4326.tif" in lines[0]
    assert not re.search(r"^(Warning|ERROR) \d+:", proc.stderr, re.M), proc.stderr
    # -q keeps it out altogether, as every other warning.
    quiet = cli("-qq", "run", real_scene("landsat_pucallpa_2020_epsg4326.tif"), "-o", tmp_path / "q.gpkg",
                "--model", tiny_model, "--no-progress")
    assert quiet.returncode == 0 and "TIFFReadDirectory" not in quiet.stderr, quiet.stderr


def test_a_bad_to_crs_is_one_clean_line_with_projs_reason(tiny_model, tmp_path):
    proc = cli("run", real_scene("landsat7_rgb_byte.tif"), "-o", tmp_path / "o.gpkg", "--model", tiny_model,
               "--to-crs", "EPSG:99999")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "Error: --to-crs 'EPSG:99999' is not a CRS GDAL knows (internal_proj_create_from_database: crs not found: "
        "EPSG:99999): use e.g. EPSG:4326"], proc.stderr
    assert only_files(tmp_path) == []


@pytest.mark.parametrize("scene, args, evidence", [
    # The analytic scene is blue, green, red, NIR but tagged red, green, blue: the tags are taken, and said.
    ("planetscope_borneo_3m_analytic.tif", (), "1,2,3 as red,green,blue (from the scene's colour tags: "
                                              "red, green, blue, undefined)"),
    ("planetscope_borneo_3m_analytic.tif", ("--bands", "3,2,1"), "3,2,1 as red,green,blue (from --bands)"),
    ("landsat_pucallpa_2020_epsg4326.tif", (), "1,2,3 as red,green,blue (the first 3 of 4 bands: the colour "
                                              "tags (gray, undefined, undefined, undefined) do not name the "
                                              "model's bands)"),
])
def test_the_bands_used_and_their_evidence_are_said_and_recorded(tiny_model, tmp_path, scene, args, evidence):
    out = tmp_path / "o.gpkg"
    res = invoke("run", real_scene(scene), "-o", out, "--model", tiny_model, "--no-progress", *args)
    assert res.exit_code == 0, res.output
    assert f"; bands {evidence}" in res.stdout
    runs = pyogrio.read_dataframe(out, layer="runs")
    assert runs.bands_used.tolist() == [evidence]
    assert int(runs.schema_version[0]) == 3


def test_evaluate_names_no_option_of_train(tiny_model, tmp_path):
    """Chips of another size: evaluate says --resize (its own), not train's --chip-size."""
    import numpy as np
    from PIL import Image

    from scenetag.commands import evaluate

    images = tmp_path / "chips"
    images.mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(images / "c0.png")
    (tmp_path / "labels.csv").write_text("image_name,tags\nc0,clear\n")
    res = invoke("evaluate", tiny_model, images, "--labels", tmp_path / "labels.csv", "--split", "all")
    assert res.exit_code == 1 and "the model takes 64x64" in res.output, res.output
    assert assert_names_own_options("evaluate", res.output) == {"--resize"}
    assert evaluate.command.name == "evaluate"
