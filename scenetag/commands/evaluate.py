"""``scenetag evaluate MODEL DATA``: per-class and averaged metrics at the model's thresholds."""

from __future__ import annotations

import json
from pathlib import Path

import click

from scenetag.commands.options import handle_errors, load_model, spec_option


def eval_options(func):
    """Options shared by ``evaluate`` and ``calibrate``."""
    opts = [
        spec_option,
        click.option("--labels", "labels_csv", type=click.Path(dir_okay=False, path_type=Path), default=None,
                     help="Kaggle/Planet CSV (image_name,tags). Default: DATA/../labels.csv."),
        click.option("--split", type=click.Choice(["val", "train", "all"]), default="val", show_default=True,
                     help="Which images: the validation split of the training run that made the model, "
                     "its training split, or every image in the CSV."),
        click.option("--split-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
                     help="split.json written by train. Default: stored in or beside the model, "
                     "else rebuilt from the seed recorded in its spec."),
        click.option("--backend", type=click.Choice(["auto", "onnx", "torch"]), default="auto", show_default=True),
        click.option("--device", default="cpu", show_default=True),
        click.option("--batch-size", type=click.IntRange(min=1), default=None,
                     help="Chips per model call. Default: the backend's (8 on the CPU)."),
        click.option("--resize", is_flag=True, help="Resample images that are not the model's chip size."),
        click.option("--min-support", type=click.IntRange(min=1), default=5, show_default=True,
                     help="Labels with fewer positives are left out of macro-F1 (supported), "
                     "and keep the global threshold when calibrating."),
    ]
    for opt in reversed(opts):
        func = opt(func)
    return func


def load_probs(model_path, data, labels_csv, spec_path, split, split_file, backend, device, batch_size, resize):
    """Predictor, labelled set and probabilities for a command."""
    from scenetag.model.evaluation import load_eval_set, predict_all

    predictor = load_model(model_path, spec_path, backend, device)
    table, images, source = load_eval_set(
        data, labels_csv, predictor.spec, split, split_file, model_path, "resize" if resize else "refuse"
    )
    probs = predict_all(predictor, images, batch_size)
    return predictor, table, probs, source


@click.command("evaluate")
@click.argument("model_path", metavar="MODEL", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("data", type=click.Path(exists=True, file_okay=False, path_type=Path))
@eval_options
@click.option("--thresholds", default=None, metavar="T|LABEL=T,...",
              help="Score at other thresholds than the model's, e.g. 0.2 or clear=0.4,haze=0.1.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True,
              help="What goes to stdout.")
@click.option("--json-out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the JSON result to this file.")
@handle_errors
def command(model_path, data, spec_path, labels_csv, split, split_file, backend, device, batch_size, resize,
            min_support, thresholds, fmt, json_out):
    """Score MODEL (ONNX or checkpoint) on the chips in DATA (an images folder).

    Per-class precision, recall, F1 and support; micro, macro and samples F1
    and F2, at the model's thresholds (or --thresholds).
    """
    from scenetag.model.evaluation import parse_thresholds
    from scenetag.model.metrics import evaluate, format_table

    predictor, table, probs, source = load_probs(model_path, data, labels_csv, spec_path, split, split_file,
                                                 backend, device, batch_size, resize)
    spec = predictor.spec
    override = parse_thresholds(thresholds)
    if override is not None:
        spec = spec.with_thresholds(override)
    result = evaluate(table.targets, probs, spec.thresholds, spec.labels, min_support=min_support)
    result.update({"model": str(model_path), "model_sha256": predictor.sha256, "split": split,
                   "split_source": source})
    text = json.dumps(result, indent=1)
    if json_out:
        json_out.write_text(text + "\n")
    if fmt == "json":
        click.echo(text)
    else:
        click.echo(f"{model_path} on {split} split ({source}), {len(table)} images")
        click.echo(format_table(result))


if __name__ == "__main__":
    command()
