"""Fine-tune a timm model on labelled chips.

One call of :func:`train` reads the Kaggle/Planet CSV and chips, makes (or
reuses) the seeded stratified split, and trains with AdamW and a cosine
schedule with linear warm-up.  After every epoch it scores the validation
split, writes ``last.pt`` (with optimizer and scheduler state, for
``resume``), ``best.pt`` when the monitored metric improves, and
``metrics.json``.  Early stopping ends the run after ``patience`` epochs
without improvement.  Progress goes to stderr through tqdm.

Output folder::

    split.json              the split (image names on each side, seed, data hash)
    last.pt / best.pt       checkpoints (+ .spec.json beside each)
    metrics.json            config, per-epoch history, best epoch
    val_probs.npz           validation names, targets and best-epoch probabilities
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from scenetag.model.training.data import (
    SPLIT_FILE,
    LabelTable,
    augment_batch,
    iterate_batches,
    load_images,
    make_split,
    read_labels,
    read_split,
    targets_digest,
    write_split,
)
from scenetag.model.preprocess import normalize
from scenetag.model.spec import IMAGENET_MEAN, IMAGENET_STD, ModelSpec
from scenetag.model.structure import structure_for
from scenetag.model.backends.torch_backend import resolve_device
from scenetag.atomic import atomic_path
from scenetag.errors import DataError, OutputExistsError

log = logging.getLogger(__name__)

MONITORS = ("map", "samples_f2", "loss")


@dataclass
class TrainConfig:
    """Everything that decides a training run (recorded in metrics.json and the spec)."""

    arch: str = "tf_efficientnet_lite0"
    name: str = "scenetag-model"
    pretrained: bool = True
    #: A timm/torchvision state dict to start from (loaded by timm), instead of the packaged weights.
    weights: str | None = None
    loss: str = "bce"
    focal_gamma: float = 2.0
    focal_alpha: float | None = 0.25
    asl_gamma_neg: float = 4.0
    asl_gamma_pos: float = 0.0
    asl_clip: float = 0.05
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-2
    warmup_epochs: float = 0.5
    patience: int = 3
    monitor: str = "map"
    val_fraction: float = 0.2
    seed: int = 0
    chip_size: int = 256
    resolution_m: float = 3.0
    on_wrong_size: str = "refuse"
    augment: bool = True
    device: str = "auto"
    amp: bool = True
    threads: int | None = None
    channels_last: bool = True
    max_steps_per_epoch: int | None = None
    labels: tuple[str, ...] | None = None
    extra: dict = field(default_factory=dict)


def predict_logits(model, images: np.ndarray, spec: ModelSpec, device: str = "cpu",
                   batch_size: int = 64, amp: bool = False, channels_last: bool = False) -> np.ndarray:
    """Logits of a uint8 NCHW array, in batches, in eval mode."""
    import torch

    model.eval()
    out = []
    use_amp = amp and device.startswith("cuda")
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(normalize(images[start:start + batch_size], spec)).to(device)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
                out.append(model(x).float().cpu().numpy())
    if not out:
        return np.zeros((0, spec.n_labels), dtype=np.float32)
    return np.concatenate(out).astype(np.float32)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-x))).astype(np.float32)


def macro_ap(y: np.ndarray, probs: np.ndarray) -> float:
    """Mean average precision over labels that have at least one positive."""
    from sklearn.metrics import average_precision_score

    cols = [j for j in range(y.shape[1]) if y[:, j].any()]
    if not cols:
        return 0.0
    return float(np.mean([average_precision_score(y[:, j], probs[:, j]) for j in cols]))


def _lr_lambda(total_steps: int, warmup_steps: int):
    def f(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return f


def _make_spec(cfg: TrainConfig, labels: Sequence[str], split: dict) -> ModelSpec:
    """The new model's spec: Planet's weather structure where its labels are Planet's (:func:`structure_for`)."""
    return ModelSpec.create(
        cfg.name, cfg.arch, labels, 0.2, structure=structure_for(labels),
        bands=("red", "green", "blue"), scaling="percentile", percentiles=(2.0, 98.0),
        mean=IMAGENET_MEAN, std=IMAGENET_STD, chip_size=cfg.chip_size, resolution_m=cfg.resolution_m,
        extra={
            "split": {k: split[k] for k in ("method", "seed", "val_fraction", "data_digest")}
            | {"file": SPLIT_FILE, "n_train": len(split["train"]), "n_val": len(split["val"])},
            "training": {k: v for k, v in asdict(cfg).items() if k not in ("labels", "extra", "device", "threads")},
            **cfg.extra,
        },
    )


def prepare_split(table: LabelTable, out: Path, cfg: TrainConfig, resume: bool) -> dict:
    """Reuse ``out/split.json`` when resuming (checking it is for this data), else make and write it."""
    path = out / SPLIT_FILE
    if resume and path.is_file():
        split = read_split(path)
        digest = targets_digest(table.names, table.targets)
        if split.get("data_digest") != digest:
            raise DataError(
                f"{path} was made for other labelled data (digest {split.get('data_digest')} vs {digest}): "
                "train into a new --out folder"
            )
        return split
    split = make_split(table, cfg.val_fraction, cfg.seed)
    write_split(split, path)
    return split


def train(
    images_dir: str | Path,
    labels_csv: str | Path,
    out: str | Path,
    cfg: TrainConfig,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Train a model; returns the final ``metrics.json`` content."""
    import torch

    from scenetag.model.training.checkpoint import load_weights, network_state_dict, read_checkpoint, save_checkpoint
    from scenetag.model.training.losses import make_loss
    from scenetag.model.training.metrics import evaluate
    from scenetag.model.training.nets import build_model

    if cfg.monitor not in MONITORS:
        raise DataError(f"monitor {cfg.monitor!r} is unknown: use one of {MONITORS}")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (resume or overwrite):
        raise OutputExistsError(
            f"output folder {str(out)!r} is not empty: pass --resume to continue that run or --overwrite to replace it"
        )
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    if device == "cpu":
        from scenetag.model.backends.glibc_malloc import keep_freed_memory

        keep_freed_memory()  # eager torch reuses freed activations instead of page-faulting them in again
    torch.manual_seed(cfg.seed)

    table = read_labels(labels_csv, cfg.labels)
    if len(table) < 4:
        raise DataError(f"{labels_csv} lists {len(table)} images: too few to train and validate")
    split = prepare_split(table, out, cfg, resume)
    train_t, val_t = table.subset(split["train"]), table.subset(split["val"])
    log.info("data: %d train, %d val images, %d labels", len(train_t), len(val_t), len(table.labels))
    t0 = time.time()
    # train takes --chip-size, so a refusal may name it (evaluate and calibrate take the model's).
    x_train = load_images(images_dir, train_t.names, cfg.chip_size, cfg.on_wrong_size, chip_size_option=True)
    x_val = load_images(images_dir, val_t.names, cfg.chip_size, cfg.on_wrong_size, chip_size_option=True)
    log.info("decoded %d images in %.1f s", len(x_train) + len(x_val), time.time() - t0)
    y_train = train_t.targets.astype(np.float32)
    y_val = val_t.targets.astype(bool)

    spec = _make_spec(cfg, table.labels, split)
    model = build_model(spec, pretrained=cfg.pretrained, weights=cfg.weights).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    criterion = make_loss(
        cfg.loss, positives=train_t.targets.sum(0), n=len(train_t), gamma=cfg.focal_gamma,
        alpha=cfg.focal_alpha, gamma_neg=cfg.asl_gamma_neg, gamma_pos=cfg.asl_gamma_pos, clip=cfg.asl_clip,
    ).to(device)

    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
    )
    steps_per_epoch = math.ceil(len(x_train) / cfg.batch_size)
    if len(x_train) >= cfg.batch_size:
        steps_per_epoch = len(x_train) // cfg.batch_size  # drop the last partial batch (BatchNorm)
    if cfg.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
    total = steps_per_epoch * cfg.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(total, int(cfg.warmup_epochs * steps_per_epoch))
    )

    history: list[dict] = []
    start_epoch, best_score, best_epoch = 0, -math.inf, -1
    if resume and (out / "last.pt").is_file():
        raw = read_checkpoint(out / "last.pt")
        load_weights(model, network_state_dict(raw), spec)
        if raw.get("optimizer"):
            optimizer.load_state_dict(raw["optimizer"])
        if raw.get("scheduler"):
            scheduler.load_state_dict(raw["scheduler"])
        start_epoch = int(raw["epoch"]) + 1
        history = list(json.loads(raw.get("history", "[]")))
        best_score = float(raw.get("best_score", -math.inf))
        best_epoch = int(raw.get("best_epoch", -1))
        log.info("resuming at epoch %d (best %.4f at epoch %d)", start_epoch, best_score, best_epoch)

    use_amp = cfg.amp and device.startswith("cuda")
    config_record = asdict(cfg) | {"device": device, "torch": torch.__version__, "threads": torch.get_num_threads()}

    def write_metrics(done: bool) -> dict:
        record = {
            "config": config_record,
            "labels": list(table.labels),
            "n_train": len(train_t),
            "n_val": len(val_t),
            "train_positives": train_t.counts(),
            "val_positives": val_t.counts(),
            "history": history,
            "best_epoch": best_epoch,
            "best_score": best_score if best_epoch >= 0 else None,
            "monitor": cfg.monitor,
            "finished": done,
        }
        with atomic_path(out / "metrics.json", replace=True) as tmp:
            tmp.write_text(json.dumps(record, indent=1))
        return record

    from tqdm import tqdm

    stale = sum(1 for h in history if h["epoch"] > best_epoch)
    for epoch in range(start_epoch, cfg.epochs):
        if stale >= cfg.patience:
            break
        model.train()
        rng = np.random.default_rng([cfg.seed, epoch])
        batches = list(iterate_batches(len(x_train), cfg.batch_size, rng, drop_last=True))[:steps_per_epoch]
        t_epoch = time.time()
        losses = []
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", file=sys.stderr, disable=not progress,
                   leave=False, mininterval=2.0)
        for idx in bar:
            chips = x_train[idx]
            if cfg.augment:
                chips = augment_batch(chips, rng)
            x = torch.from_numpy(normalize(chips, spec)).to(device)
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            y = torch.from_numpy(y_train[idx]).to(device)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
                logits = model(x)
            loss = criterion(logits.float(), y)
            if not torch.isfinite(loss):
                raise DataError(f"training loss became {loss.item()} at epoch {epoch + 1}: lower --lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses[-10:]):.4f}")
        bar.close()
        train_s = time.time() - t_epoch
        logits = predict_logits(model, x_val, spec, device, amp=cfg.amp, channels_last=cfg.channels_last)
        probs = sigmoid(logits)
        with torch.no_grad():
            val_loss = float(criterion(torch.from_numpy(logits).to(device), torch.from_numpy(y_val.astype(np.float32)).to(device)))
        res = evaluate(y_val, probs, 0.2, table.labels)
        row = {
            "epoch": epoch,
            "train_loss": float(np.mean(losses)) if losses else None,
            "val_loss": val_loss,
            "val_map": macro_ap(y_val, probs),
            "val_samples_f2": res["samples_f2"],
            "val_macro_f1": res["macro_f1"],
            "val_macro_f1_supported": res["macro_f1_supported"],
            "lr": scheduler.get_last_lr()[0],
            "train_chips_per_s": len(batches) * cfg.batch_size / max(train_s, 1e-9),
            "epoch_s": time.time() - t_epoch,
        }
        history.append(row)
        score = {"map": row["val_map"], "samples_f2": row["val_samples_f2"], "loss": -val_loss}[cfg.monitor]
        improved = score > best_score
        if improved:
            best_score, best_epoch, stale = score, epoch, 0
        else:
            stale += 1
        log.info(
            "epoch %d: train loss %.4f, val loss %.4f, mAP %.4f, samples-F2@0.2 %.4f, macro-F1@0.2 %.4f, "
            "%.1f chips/s%s", epoch + 1, row["train_loss"] or float("nan"), val_loss, row["val_map"],
            row["val_samples_f2"], row["val_macro_f1"], row["train_chips_per_s"], " (best)" if improved else "",
        )
        meta = {"history": json.dumps(history), "best_score": float(best_score), "best_epoch": int(best_epoch)}
        if improved:
            save_checkpoint(out / "best.pt", model, spec, epoch, replace=True, **meta)
            np.savez(out / "val_probs.npz", names=np.array(val_t.names), targets=y_val.astype(np.uint8),
                     probs=probs, labels=np.array(table.labels))
        save_checkpoint(out / "last.pt", model, spec, epoch, optimizer, scheduler, replace=True, **meta)
        write_metrics(False)
    if stale >= cfg.patience:
        log.info("early stop: no improvement of %s for %d epochs", cfg.monitor, cfg.patience)
    return write_metrics(True)
