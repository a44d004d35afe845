"""``scenetag spec show MODEL`` and ``scenetag spec set MODEL ... -o MODEL2``: the spec inside a model file."""

from __future__ import annotations

import json
from pathlib import Path

import click

from scenetag.commands.options import handle_errors, output_file_option, overwrite_option, thresholds_option
from scenetag.errors import OptionError

_MODEL = click.argument("model_path", metavar="MODEL",
                        type=click.Path(exists=True, dir_okay=False, path_type=Path))


@click.group("spec")
def command() -> None:
    """Read or edit the spec stored in a model (labels, thresholds, label structure, TTA, bands, scaling)."""


def read_spec(path: Path):
    """The spec stored in ``path``: an ONNX file's metadata, or a checkpoint's own."""
    from scenetag.model.backends.registry import backend_for

    if backend_for(path) == "onnx":
        from scenetag.model.backends.onnx_backend import read_onnx_spec

        return read_onnx_spec(path)
    from scenetag.api import load_model

    return load_model(path, device="cpu").spec


def describe(spec) -> str:
    """The spec in readable lines."""
    width = max(len(lab) for lab in spec.labels)
    lines = [f"name        {spec.name} ({spec.arch}), spec version {spec.spec_version}",
             f"bands       {', '.join(spec.bands)}; chip {spec.chip_size} px at {spec.resolution_m:g} m",
             f"scaling     {spec.scaling} " + (f"{spec.percentiles}" if spec.scaling == "percentile"
                                                else f"{spec.fixed_range}"),
             f"mean / std  {spec.mean} / {spec.std}",
             f"tta         {spec.tta} (the thresholds were calibrated with it; run uses it by default)"]
    for name, group in spec.structure.exclusive.items():
        lines.append(f"exclusive   {name}: {', '.join(group)} (exactly one per chip, the most probable)")
    for label, removed in spec.structure.suppresses.items():
        lines.append(f"suppresses  {label} removes {', '.join(removed)}")
    if not spec.structure:
        lines.append("structure   none (labels are tagged independently)")
    cal = spec.extra.get("calibration", {}) if isinstance(spec.extra, dict) else {}
    if cal.get("chosen"):
        cf = cal.get("crossfit", {})
        honest = cal.get("samples_f2_cross_fitted", cf.get(cal["chosen"] if cal["chosen"] == "global" else
                                                            "calibrated", {}).get("samples"))
        lines.append(f"calibration {cal['chosen']} thresholds, {cal.get('metric')} on the {cal.get('split')} split "
                     f"({cal.get('n_images')} chips, TTA {cal.get('tta', 'none')}"
                     + (f"; cross-fitted samples-{cal.get('metric')} {honest:.4f})" if honest is not None else ")"))
    lines.append("thresholds")
    lines += [f"  {lab:<{width}} {thr:.2f}" for lab, thr in zip(spec.labels, spec.thresholds)]
    return "\n".join(lines)


@command.command("show")
@_MODEL
@click.option("--json", "as_json", is_flag=True, help="Print the spec as JSON instead.")
@handle_errors
def show(model_path: Path, as_json: bool) -> None:
    """Print the spec stored in MODEL (an ONNX file or a checkpoint)."""
    spec = read_spec(model_path)
    click.echo(json.dumps(spec.to_dict(), indent=1, sort_keys=True) if as_json else describe(spec))


@command.command("set")
@_MODEL
@thresholds_option("New thresholds: one value (0.2) or LABEL=T pairs (clear=0.4,haze=0.1); the others keep theirs.")
@click.option("--tta", type=click.Choice(["none", "flips", "d4"]), default=None,
              help="Record this TTA as the one the thresholds were calibrated with (run's default).")
@click.option("--structure", "structure", default=None, metavar="planet|none|FILE",
              help="Label structure: planet (the weather group and the cloudy rule), none, or a JSON file "
              '{"exclusive": {...}, "suppresses": {...}}.')
@output_file_option("Write the edited model here (ONNX). Refused if it exists, unless --overwrite.", required=True)
@overwrite_option
@handle_errors
def set_(model_path: Path, thresholds, tta, structure, output: Path, overwrite: bool) -> None:
    """Copy MODEL (ONNX) to --out with an edited spec, without retraining."""
    from dataclasses import replace

    from scenetag.model.backends.registry import backend_for
    from scenetag.model.training.calibrate import check_output
    from scenetag.model.training.export import rewrite_onnx_spec

    if backend_for(model_path) != "onnx":
        raise OptionError(f"spec set edits ONNX files, and {model_path.name} is not one: export it first")
    if output.resolve() == model_path.resolve():
        raise OptionError(f"--out {output} is MODEL itself: write the edited model to another file")
    check_output(model_path, output, overwrite)
    spec = read_spec(model_path)
    if isinstance(thresholds, dict):
        thresholds = {**dict(zip(spec.labels, spec.thresholds)), **thresholds}
    if thresholds is not None:
        spec = spec.with_thresholds(thresholds)
    if tta is not None:
        spec = replace(spec, tta=tta)
    if structure is not None:
        spec = spec.with_structure(_structure(structure, spec.labels))
    rewrite_onnx_spec(model_path, output, spec, replace=overwrite)
    click.echo(describe(spec))
    click.echo(f"wrote {output}", err=True)


def _structure(value: str, labels):
    from scenetag.model.structure import LabelStructure, planet_structure
    from scenetag.errors import ModelSpecError

    if value == "none":
        return None
    if value == "planet":
        return planet_structure(labels)
    try:
        return LabelStructure.from_dict(json.loads(Path(value).read_text()))
    except (OSError, ValueError) as exc:
        raise ModelSpecError(f"--structure {value!r} is not planet, none or a readable JSON file ({exc})") from exc
