"""``scenetag evaluate MODEL DATA``: per-class and averaged metrics at the model's thresholds."""

from __future__ import annotations

import json
from pathlib import Path

import click

from scenetag.commands.options import (handle_errors, labelled_data_options, output_file_option,
                                       overwrite_option, thresholds_option)


@click.command("evaluate")
@click.argument("model_path", metavar="MODEL", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("data", type=click.Path(exists=True, file_okay=False, path_type=Path))
@labelled_data_options
@thresholds_option("Score at other thresholds than the model's, e.g. 0.2 or clear=0.4,haze=0.1.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True,
              help="What goes to stdout.")
@output_file_option("Also write the JSON result to this file (also --json-out). Refused if it exists, "
                    "unless --overwrite.", also=("--json-out",))
@overwrite_option
@handle_errors
def command(model_path, data, spec_path, labels_csv, split, split_file, backend, device, batch_size, resize,
            min_support, tta, thresholds, fmt, output, overwrite):
    """Score MODEL (ONNX or checkpoint) on the chips in DATA (an images folder).

    Per-class precision, recall, F1 and support; micro, macro and samples F1
    and F2, at the model's thresholds (or --thresholds), with the spec's label
    structure (one weather tag per chip...) and, for comparison, without it.
    """
    from scenetag.model.training.evaluation import score_eval_set, write_result
    from scenetag.model.training.metrics import SUMMARY_KEYS, evaluate, format_table

    from scenetag.api import load_model

    predictor = load_model(model_path, spec_path, backend=backend, device=device, tta=tta, thresholds=thresholds)
    scored = score_eval_set(predictor, data, labels_csv, split, split_file, model_path,
                            "resize" if resize else "refuse", batch_size)
    spec = predictor.spec
    result = evaluate(scored.table.targets, scored.probs, spec.thresholds, spec.labels, min_support=min_support,
                      structure=spec.structure)
    result.update({"model": str(model_path), "model_sha256": predictor.sha256, "split": split,
                   "split_source": scored.source, "tta": spec.tta})
    if spec.structure:
        plain = evaluate(scored.table.targets, scored.probs, spec.thresholds, spec.labels, min_support=min_support,
                         groups=spec.structure.exclusive)
        result["without_structure"] = {k: plain[k] for k in (*SUMMARY_KEYS, "groups_not_one")}
    if output:
        write_result(result, output, overwrite)
    if fmt == "json":
        click.echo(json.dumps(result, indent=1))
    else:
        click.echo(f"{model_path} on {split} split ({scored.source}), {len(scored.table)} images")
        click.echo(format_table(result))
        if "without_structure" in result:
            click.echo("")
            click.echo("without the label structure (thresholds alone):")
            for key, value in result["without_structure"].items():
                click.echo(f"{key:<28} {value}" if isinstance(value, dict) else f"{key:<28} {value:.4f}")


if __name__ == "__main__":
    command()
