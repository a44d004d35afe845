"""Data reading, split, augmentation, and training on real Planet chips."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from scenetag.model.training.checkpoint import load_checkpoint, read_checkpoint
from scenetag.model.training.data import augment_batch, load_images, make_split, read_labels, split_indices
from scenetag.model.spec import PLANET_LABELS
from scenetag.errors import DataError
from tests.model_fixtures import PLANET_CSV, SMALL_ARCH, planet_or_skip, planet_subset, real_chips


# -- data ---------------------------------------------------------------------
def test_reads_planet_csv_with_planet_labels():
    planet_or_skip()
    table = read_labels(PLANET_CSV, PLANET_LABELS)
    assert len(table) == 795 and table.labels == PLANET_LABELS
    counts = table.counts()
    assert counts["primary"] > counts["clear"] > counts["agriculture"] > 0
    assert table.targets.sum(1).min() >= 1


def test_cmyk_jpegs_become_rgb():
    from PIL import Image

    root = planet_or_skip()
    name = read_labels(PLANET_CSV).names[0]
    with Image.open(root / "images" / f"{name}.jpg") as im:
        assert im.mode == "CMYK"
        raw = np.asarray(im)[..., :3]
        rgb = np.asarray(im.convert("RGB"))
    got = load_images(root / "images", [name], 256)[0].transpose(1, 2, 0)
    np.testing.assert_array_equal(got, rgb)
    assert np.abs(got.astype(int) - raw).mean() > 50  # the raw channels are inverted


def test_missing_images_are_named(tmp_path):
    (tmp_path / "img").mkdir()
    with pytest.raises(DataError, match=r"2 of 2 images .* missing .*\['a', 'b'\]"):
        load_images(tmp_path / "img", ["a", "b"], 64)


@pytest.mark.parametrize("text, match", [
    ("", "is empty"),
    ("image_name,tags\n", "no rows"),
    ("name,labels\na,clear\n", "expected 'image_name,tags'"),
    ("image_name,tags\na,clear\na,haze\n", "listed twice"),
    ("image_name,tags\na,clear volcano\n", r"tags \['volcano'\] \(first on line 2\)"),
])
def test_bad_csv(tmp_path, text, match):
    path = tmp_path / "labels.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=match):
        read_labels(path, PLANET_LABELS)


def test_wrong_image_size_refused_or_resized(tmp_path):
    from PIL import Image

    Image.new("RGB", (100, 80), (10, 20, 30)).save(tmp_path / "a.jpg")
    with pytest.raises(DataError, match=r"100x80, the model takes 64x64: refused; pass --resize"):
        load_images(tmp_path, ["a"], 64)
    out = load_images(tmp_path, ["a"], 64, on_wrong_size="resize")
    assert out.shape == (1, 3, 64, 64) and abs(int(out[0, 2].mean()) - 30) <= 2


def test_split_is_seeded_stratified_and_disjoint():
    planet_or_skip()
    table = read_labels(PLANET_CSV, PLANET_LABELS)
    a = make_split(table, 0.2, seed=0)
    b = make_split(table, 0.2, seed=0)
    c = make_split(table, 0.2, seed=1)
    assert a == b and a["val"] != c["val"]
    assert not set(a["train"]) & set(a["val"])
    assert len(a["train"]) + len(a["val"]) == len(table)
    val = table.subset(a["val"]).counts()
    for lab, n in table.counts().items():
        if n >= 10:  # each common label lands in validation in about its share
            assert abs(val[lab] - 0.2 * n) <= max(2, 0.1 * n), lab


def test_split_indices_known_small_case():
    y = np.array([[1, 0], [1, 0], [0, 1], [0, 1], [1, 1], [0, 0], [1, 0], [0, 1], [1, 1], [0, 0]])
    tr, va = split_indices(y, 0.2, seed=3)
    assert len(va) == 2 and sorted(np.concatenate([tr, va])) == list(range(10))
    assert (split_indices(y, 0.2, seed=3)[1] == va).all()


def test_augmentation_is_dihedral():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (16, 3, 8, 8), dtype=np.uint8)
    out = augment_batch(x, np.random.default_rng(1))
    for a, b in zip(x, out):
        views = [np.rot90(v, k, axes=(1, 2)) for v in (a, a[:, :, ::-1]) for k in range(4)]
        assert any(np.array_equal(b, v) for v in views)
        assert sorted(a.ravel()) == sorted(b.ravel())  # no colour change
    assert not all(np.array_equal(a, b) for a, b in zip(x, out))


# -- training -----------------------------------------------------------------
def test_few_steps_on_real_chips_lower_the_loss():
    """lite0 from the ImageNet weights, BCE, 8 AdamW steps on 16 real chips (64 px): the loss goes down."""
    from scenetag.model.training.losses import make_loss
    from scenetag.model.training.nets import build_model
    from scenetag.model.preprocess import normalize
    from scenetag.model.spec import ModelSpec

    planet_or_skip()
    table = read_labels(PLANET_CSV, PLANET_LABELS)
    chips = real_chips(16, size=64)
    y = torch.from_numpy(table.targets[:16].astype(np.float32))
    spec = ModelSpec.create("t", "tf_efficientnet_lite0", PLANET_LABELS, 0.2, chip_size=64)
    torch.manual_seed(0)
    model = build_model(spec, pretrained=True).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.from_numpy(normalize(chips, spec))
    loss_fn = make_loss("bce")
    losses = []
    for _ in range(8):
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_train_command_writes_outputs_and_resumes(tmp_path):
    """The CLI end to end on 48 real chips at 64 px: split, checkpoints, metrics; resume adds an epoch."""
    from scenetag.commands.train import command

    images, csv = planet_subset(tmp_path, 48, labels=("clear", "haze", "primary", "water", "cloudy"))
    out = tmp_path / "run"
    args = [str(images), "--labels", str(csv), "--out", str(out), "--arch", SMALL_ARCH, "--label-set", "csv",
            "--chip-size", "64", "--resize", "--batch-size", "8", "--max-steps-per-epoch", "2", "--no-progress",
            "--val-fraction", "0.25", "--patience", "5"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = CliRunner().invoke(command, args + ["--epochs", "2"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert summary["epochs_run"] == 2
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["finished"] and [h["epoch"] for h in metrics["history"]] == [0, 1]
    assert metrics["n_train"] + metrics["n_val"] == 48
    split = json.loads((out / "split.json").read_text())
    assert len(split["val"]) == metrics["n_val"] and split["seed"] == 0
    spec = json.loads((out / "best.spec.json").read_text())
    assert spec["extra"]["split"]["seed"] == 0 and spec["chip_size"] == 64
    val = np.load(out / "val_probs.npz")
    assert val["names"].tolist() == split["val"] and val["labels"].tolist() == spec["labels"]
    assert val["probs"].shape == val["targets"].shape == (metrics["n_val"], 5)
    assert ((val["probs"] >= 0) & (val["probs"] <= 1)).all()
    assert read_checkpoint(out / "last.pt")["epoch"] == 1
    _, best_spec, _ = load_checkpoint(out / "best.pt")
    assert list(best_spec.labels) == spec["labels"] and read_checkpoint(out / "best.pt")["epoch"] in (0, 1)

    res = CliRunner().invoke(command, args + ["--epochs", "2"])
    assert res.exit_code != 0 and "--resume" in res.output  # no silent overwrite

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = CliRunner().invoke(command, args + ["--epochs", "3", "--resume"])
    assert res.exit_code == 0, res.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == [0, 1, 2]
    assert read_checkpoint(out / "last.pt")["epoch"] == 2
    assert json.loads((out / "split.json").read_text()) == split


def test_train_refuses_unknown_tags_by_default(tmp_path):
    from scenetag.commands.train import command

    images, csv = planet_subset(tmp_path, 8)
    csv.write_text(csv.read_text() + "train_0,clear volcano\n")
    res = CliRunner().invoke(command, [str(images), "--labels", str(csv), "--out", str(tmp_path / "o")])
    assert res.exit_code == 1 and "volcano" in res.output


@pytest.mark.slow
def test_two_epochs_full_resolution_default_arch(tmp_path):
    """The default configuration (lite0, 256 px, ImageNet weights) for two short epochs: the loss goes down."""
    from scenetag.model.training.train import TrainConfig, train

    images, csv = planet_subset(tmp_path, 96)
    cfg = TrainConfig(epochs=2, batch_size=16, labels=PLANET_LABELS, threads=2)
    res = train(images, csv, tmp_path / "o", cfg, progress=False)
    first, second = res["history"]
    assert second["train_loss"] < first["train_loss"]
    assert second["val_loss"] < first["val_loss"]
