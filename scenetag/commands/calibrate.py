"""``scenetag calibrate MODEL DATA [--metric f1|f2] [-o MODEL2]``: per-class thresholds into the spec."""

from __future__ import annotations

import json
from pathlib import Path

import click

from scenetag.commands.options import (handle_errors, labelled_data_options, output_file_option,
                                       overwrite_option)


@click.command("calibrate")
@click.argument("model_path", metavar="MODEL", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("data", type=click.Path(exists=True, file_okay=False, path_type=Path))
@labelled_data_options
@click.option("--metric", type=click.Choice(["f1", "f2"]), default="f2", show_default=True,
              help="Per-class metric the thresholds maximise (f2: Kaggle's samples-F2 favours recall).")
@click.option("--global-threshold", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.2,
              show_default=True, help="Threshold of labels under --min-support, and the baseline to beat.")
@click.option("--bounds", type=(float, float), default=(0.05, 0.95), show_default=True, metavar="LOW HIGH",
              help="Search thresholds only within [LOW, HIGH]: on a small validation set the outer "
              "tails rest on one or two chips.")
@click.option("--choose", type=click.Choice(["auto", "per-class", "global"]), default="auto", show_default=True,
              help="Thresholds written with -o: per-class, the global threshold, or auto: the per-class "
              "ones only where the cross-fitted estimate (fitted on some chips, scored on others) says "
              "they beat the global threshold.")
@output_file_option("Write the model with calibrated thresholds here (same format as MODEL). "
                    "Without it, only the report is printed.")
@overwrite_option
@handle_errors
def command(model_path, data, spec_path, labels_csv, split, split_file, backend, device, batch_size, resize,
            min_support, tta, metric, global_threshold, bounds, choose, output, overwrite):
    """Fit per-class thresholds of MODEL on DATA (by default its validation split).

    Prints the thresholds and the metrics before (global threshold) and after
    as JSON on stdout, and on stderr the in-sample figures beside the
    cross-fitted ones (the honest estimate: thresholds fitted on half the chips,
    scored on the other half).  Tags are made with the spec's label structure;
    the probabilities with --tta (default: the spec's), which the written model
    records.
    """
    from scenetag.model.training.calibrate import calibrate_model, check_output
    from scenetag.model.training.evaluation import score_eval_set

    if not 0 < bounds[0] <= global_threshold <= bounds[1] < 1:
        raise click.BadParameter(f"need 0 < {bounds[0]} <= global threshold {global_threshold} <= {bounds[1]} < 1",
                                 param_hint="--bounds")
    if output is not None:
        check_output(model_path, output, overwrite)  # before the predictions, which take a while
    if split != "val":
        click.echo(f"warning: calibrating on the {split} split, not validation images", err=True)
    from scenetag.api import load_model

    predictor = load_model(model_path, spec_path, backend=backend, device=device, tta=tta)
    scored = score_eval_set(predictor, data, labels_csv, split, split_file, model_path,
                            "resize" if resize else "refuse", batch_size)
    result = calibrate_model(predictor, scored.table, scored.probs, split, scored.source, metric=metric,
                             global_threshold=global_threshold, min_support=min_support, bounds=bounds,
                             choose=choose)
    if output is not None:
        result.save(output, overwrite)
    click.echo(json.dumps(result.record, indent=1))
    for line in summary_lines(result.record, metric, global_threshold):
        click.echo(line, err=True)


def summary_lines(record: dict, metric: str, global_threshold: float) -> list[str]:
    """The in-sample and cross-fitted figures of a calibration record, and which thresholds were kept, in words."""
    b, a, cf = record["before"], record["after"], record["crossfit"]
    g, c = cf["global"], cf["calibrated"]
    lines = [
        f"in-sample   samples-{metric}: {b['samples']:.4f} at {global_threshold} -> {a['samples']:.4f} per-class "
        f"(fitted and scored on the same {record['n_images']} chips: flattering)",
        f"cross-fitted samples-{metric}: {g['samples']:.4f} at {global_threshold} -> {c['samples']:.4f} per-class "
        f"(difference {cf['samples_diff']:+.4f} ± {cf['samples_diff_sd']:.4f}, {cf['folds']} folds x "
        f"{cf['repeats']} repeats)",
        f"macro-{metric}: in-sample {b['macro']:.4f} -> {a['macro']:.4f}; cross-fitted {g['macro']:.4f} -> "
        f"{c['macro']:.4f}",
    ]
    if cf["per_class_helps"]:
        lines.append(f"per-class thresholds beat the global {global_threshold} on chips they were not fitted on")
    else:
        lines.append(f"per-class thresholds do NOT beat the global {global_threshold} on chips they were not fitted "
                     f"on: they only fit these chips; the global threshold is the honest choice")
    lines.append(f"kept: {record['chosen']} thresholds")
    return lines


if __name__ == "__main__":
    command()
