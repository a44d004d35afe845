"""``scenetag export CHECKPOINT -o model.onnx``: a checkpoint to a verified ONNX file with its spec."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import click

from scenetag.commands.options import (handle_errors, output_file_option, overwrite_option, parse_thresholds,
                                       spec_option)


def parse_label_names(value: str | None) -> tuple[str, ...] | None:
    """``planet``, a CSV in Kaggle format (its tags, sorted), a text file (one per line) or ``a,b,c``."""
    if not value:
        return None
    from scenetag.model.spec import PLANET_LABELS

    if value.lower() == "planet":
        return PLANET_LABELS
    path = Path(value)
    if path.is_file():
        if path.suffix.lower() == ".csv":
            from scenetag.model.training.data import read_labels

            return read_labels(path).labels
        return tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
    return tuple(v.strip() for v in value.split(",") if v.strip())


@click.command("export")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@output_file_option("ONNX file to write.", required=True)
@spec_option
@click.option("--arch", default=None, help="timm architecture, for checkpoints without a spec (Lightning, plain).")
@click.option("--labels", "label_names", default=None, metavar="planet|CSV|FILE|a,b,c",
              help="Label names in output order, for checkpoints without a spec.")
@click.option("--thresholds", default=None, metavar="T|LABEL=T,...", help="Thresholds to store in the spec.")
@click.option("--name", default=None, help="Model name to store in the spec.")
@click.option("--chip-size", type=click.IntRange(min=8), default=None,
              help="Chip size to store in the spec and export at (for checkpoints without a spec; default 256).")
@click.option("--opset", type=click.IntRange(min=11), default=17, show_default=True,
              help="ONNX opset to export with.")
@click.option("--check-chips", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Folder of real chips (jpg/png) to compare torch and ONNX Runtime on, besides random chips.")
@click.option("--n-check", type=click.IntRange(min=1), default=16, show_default=True,
              help="How many real chips to compare on.")
@click.option("--tolerance", type=float, default=1e-4, show_default=True,
              help="Largest allowed probability difference between torch and ONNX Runtime.")
@overwrite_option
@handle_errors
def command(checkpoint, output, spec_path, arch, label_names, thresholds, name, chip_size, opset, check_chips, n_check,
            tolerance, overwrite):
    """Export CHECKPOINT (ours, a plain state dict, or Lightning's) to ONNX.

    The graph takes normalised float32 NCHW input with a dynamic batch axis and
    returns sigmoid probabilities; the spec goes into its metadata.  The export
    is checked with onnx.checker and compared with torch; prints the report as JSON.
    """
    from scenetag.errors import OutputExistsError
    from scenetag.model.spec import ModelSpec
    from scenetag.model.training.checkpoint import load_checkpoint
    from scenetag.model.training.export import export_onnx

    if output.exists() and not overwrite:
        raise OutputExistsError(f"{output} exists: pass --overwrite to replace it")
    spec = ModelSpec.from_file(spec_path) if spec_path else None
    labels = parse_label_names(label_names)
    thr = parse_thresholds(thresholds)
    model, spec, _ = load_checkpoint(checkpoint, spec=spec, arch=arch, labels=labels, thresholds=thr,
                                  build_options=True)
    if name:
        spec = replace(spec, name=name)
    if chip_size:
        spec = replace(spec, chip_size=chip_size)
    real = None
    if check_chips is not None:
        from scenetag.model.training.data import IMAGE_SUFFIXES, load_images

        names = sorted(p.name for p in check_chips.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:n_check]
        real = load_images(check_chips, names, spec.chip_size, on_wrong_size="resize")
    report = export_onnx(model, spec, output, real_chips=real, opset=opset, tolerance=tolerance,
                         overwrite=overwrite)
    report["spec"] = {"name": spec.name, "arch": spec.arch, "labels": list(spec.labels),
                      "thresholds": list(spec.thresholds)}
    click.echo(json.dumps(report, indent=1))


if __name__ == "__main__":
    command()
