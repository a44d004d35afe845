"""``scenetag calibrate MODEL DATA [--metric f1|f2] [--out MODEL2]``: per-class thresholds into the spec."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import click

from scenetag.commands.options import handle_errors
from scenetag.commands.evaluate import eval_options, load_probs


@click.command("calibrate")
@click.argument("model_path", metavar="MODEL", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("data", type=click.Path(exists=True, file_okay=False, path_type=Path))
@eval_options
@click.option("--metric", type=click.Choice(["f1", "f2"]), default="f2", show_default=True,
              help="Per-class metric the thresholds maximise (f2: Kaggle's samples-F2 favours recall).")
@click.option("--global-threshold", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.2,
              show_default=True, help="Threshold of labels under --min-support, and the baseline to beat.")
@click.option("--bounds", type=(float, float), default=(0.05, 0.95), show_default=True, metavar="LOW HIGH",
              help="Search thresholds only within [LOW, HIGH]: on a small validation set the outer "
              "tails rest on one or two chips.")
@click.option("--out", "out_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the model with calibrated thresholds here (same format as MODEL). "
              "Without it, only the report is printed.")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
@handle_errors
def command(model_path, data, spec_path, labels_csv, split, split_file, backend, device, batch_size, resize,
            min_support, metric, global_threshold, bounds, out_path, overwrite):
    """Fit per-class thresholds of MODEL on DATA (by default its validation split).

    Prints the thresholds and the metrics before (global threshold) and after
    as JSON on stdout.
    """
    from scenetag.model.calibrate import calibrate, crossfit
    from scenetag.errors import OutputExistsError

    if out_path is not None and out_path.exists() and not overwrite:
        raise OutputExistsError(f"{out_path} exists: pass --overwrite to replace it")
    if split != "val":
        click.echo(f"warning: calibrating on the {split} split, not validation images", err=True)
    predictor, table, probs, source = load_probs(model_path, data, labels_csv, spec_path, split, split_file,
                                                 backend, device, batch_size, resize)
    spec = predictor.spec
    if not 0 < bounds[0] <= global_threshold <= bounds[1] < 1:
        raise click.BadParameter(f"need 0 < {bounds[0]} <= global threshold {global_threshold} <= {bounds[1]} < 1",
                                 param_hint="--bounds")
    cal = calibrate(table.targets, probs, metric, global_threshold, min_support, bounds)
    record = cal.to_dict(spec.labels) | {
        "split": split, "split_source": source, "n_images": len(table),
        "support": table.counts(),
        "crossfit": crossfit(table.targets, probs, metric, global_threshold, min_support, bounds=bounds),
    }
    new_spec = spec.with_thresholds(list(cal.thresholds))
    extra = dict(new_spec.extra)
    extra["calibration"] = {k: record[k] for k in ("metric", "global_threshold", "min_support", "bounds", "split",
                                                    "n_images", "before", "after", "reasons")}
    new_spec = replace(new_spec, extra=extra)
    if out_path is not None:
        _write(model_path, out_path, new_spec, predictor)
        record["out"] = str(out_path)
    click.echo(json.dumps(record, indent=1))
    b, a = cal.before, cal.after
    click.echo(
        f"samples-{metric}: {b['samples']:.4f} at {global_threshold} -> {a['samples']:.4f} calibrated; "
        f"macro-{metric}: {b['macro']:.4f} -> {a['macro']:.4f}", err=True,
    )


def _write(model_path: Path, out_path: Path, spec, predictor) -> None:
    from scenetag.model.predictor import TORCH_SUFFIXES

    if model_path.suffix.lower() in TORCH_SUFFIXES:
        from scenetag.model.checkpoint import save_checkpoint

        if out_path.suffix.lower() not in TORCH_SUFFIXES:
            raise click.UsageError(f"MODEL is a checkpoint: --out needs one of {TORCH_SUFFIXES}, got {out_path.name}")
        save_checkpoint(out_path, predictor.model, spec)
    else:
        from scenetag.model.export import rewrite_onnx_spec

        rewrite_onnx_spec(model_path, out_path, spec)


if __name__ == "__main__":
    command()
