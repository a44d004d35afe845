"""``scenetag quantize MODEL --chips DIR -o MODEL_INT8``: an INT8 copy of an ONNX model, with its accuracy cost."""

from __future__ import annotations

import json
from pathlib import Path

import click

from scenetag.commands.options import backend_option, handle_errors, output_file_option, overwrite_option
# Light (numpy and the model-side modules; NNCF and ONNX are imported when it runs): the recipe choices.
from scenetag.model.training.quantize import DEFAULT_RECIPE, RECIPES


@click.command("quantize")
@click.argument("model_path", metavar="MODEL", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--chips", "chips_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder of the labelled chips the model was trained on (calibration uses its training "
              "split, the comparison its validation split).")
@click.option("--labels", "labels_csv", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Kaggle/Planet CSV (image_name,tags). Default: CHIPS/../labels.csv.")
@click.option("--split-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="split.json written by train. Default: stored in or beside the model, "
              "else rebuilt from the seed recorded in its spec.")
@output_file_option("Write the INT8 model here (NAME.onnx), and its model card as NAME.md beside it.",
                    required=True)
@click.option("--recipe", type=click.Choice(list(RECIPES)), default=DEFAULT_RECIPE, show_default=True,
              help="How NNCF quantises: " + "; ".join(f"{n}: {r.description}" for n, r in RECIPES.items())
              + ". The default came closest to the bar on the default model, which no recipe met "
              "(docs/performance.md, \"INT8\").")
@click.option("--calibration-chips", type=click.IntRange(min=1), default=None,
              help="Training-split chips to calibrate on (default 300, or all if fewer).")
@click.option("--max-tag-change", type=click.FloatRange(0, 1), default=None,
              help="Largest share of tag decisions (chip x label) the INT8 model may change (default 0.01).")
@click.option("--max-f2-drop", type=click.FloatRange(0, 1), default=None,
              help="Largest samples-F2 loss allowed on the validation split (default 0.01).")
@click.option("--force", is_flag=True, help="Write the INT8 model even where it misses the accuracy bar "
              "(its spec and card say so).")
@backend_option
@click.option("--resize", is_flag=True, help="Resample chips that are not the model's chip size.")
@click.option("--min-support", type=click.IntRange(min=1), default=5, show_default=True,
              help="Labels with fewer positives are left out of macro-F1 (supported).")
@overwrite_option
@handle_errors
def command(model_path, chips_dir, labels_csv, split_file, output, recipe, calibration_chips, max_tag_change,
            max_f2_drop, force, backend, resize, min_support, overwrite):
    """Quantise the ONNX MODEL to INT8 (NNCF post-training quantisation) and measure what it costs.

    Calibrates on the training split of CHIPS, then scores the fp32 and the
    INT8 model on the validation split: the share of tag decisions that
    change, samples-F2 and macro-F1 of each.  The comparison goes into the
    INT8 model's spec and its model card.  A model that changes more than 1%
    of tag decisions or loses more than 0.01 of samples-F2 is not written,
    unless --force.  Prints the comparison as JSON on stdout.
    """
    from scenetag.model.training import quantize as q

    result = q.quantize_model(
        model_path, chips_dir, output, labels_csv, recipe=recipe,
        calibration_chips=calibration_chips or q.CALIBRATION_CHIPS, split_file=split_file, backend=backend,
        force=force, overwrite=overwrite, min_support=min_support,
        max_tag_change=q.MAX_TAG_CHANGE if max_tag_change is None else max_tag_change,
        max_f2_drop=q.MAX_F2_DROP if max_f2_drop is None else max_f2_drop,
        on_wrong_size="resize" if resize else "refuse")
    click.echo(json.dumps(result.comparison, indent=1))
    c = result.comparison
    if not result.within_bar:
        click.echo(f"warning: written with --force although {q.refusal(c)}", err=True)
    click.echo(f"wrote {result.out} and {result.card}: {c['tag_decisions_changed']:.2%} of tag decisions changed, "
               f"samples-F2 {c['samples_f2']['fp32']:.4f} -> {c['samples_f2']['int8']:.4f}", err=True)


if __name__ == "__main__":
    command()
