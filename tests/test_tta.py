"""Test-time augmentation: the dihedral views of the batch in memory, averaged, over any backend."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from scenetag.model.backends import create_predictor
from scenetag.model.backends.tta import TTAPredictor, with_tta
from scenetag.model.tta import average, n_views, views
from tests.model_fixtures import small_model, tiny_spec


def d4_symmetric(chips: np.ndarray) -> np.ndarray:
    """Chips equal to each of their 8 dihedral views: the elementwise max over the orbit."""
    return views(chips, "d4").reshape(8, *chips.shape).max(0)


class Counting:
    """A Predictor that is not invariant (it reads the top-left pixel) and counts the chips it is given."""

    def __init__(self, spec):
        self.spec, self.sha256, self.path, self.batch_size, self.device = spec, "0" * 64, "fake", 4, "cpu"
        self.calls: list[int] = []

    on_gpu = False

    def predict(self, chips):
        self.calls.append(len(chips))
        v = chips[:, 0, 0, 0].astype(np.float32) / 255
        return np.repeat(v[:, None], self.spec.n_labels, axis=1)


@pytest.mark.parametrize("mode, n", [("none", 1), ("flips", 2), ("d4", 8)])
def test_views_are_the_dihedral_group(mode, n):
    x = np.arange(2 * 3 * 4 * 4, dtype=np.uint8).reshape(2, 3, 4, 4)
    v = views(x, mode)
    assert n_views(mode) == n and v.shape == (n * 2, 3, 4, 4)
    distinct = {v[i].tobytes() for i in range(0, len(v), 2)}
    assert len(distinct) == n  # no view twice
    assert (v[:2] == x).all()  # the first view is the batch itself


def test_d4_of_a_symmetric_input_equals_the_plain_output_and_a_non_invariant_model_differs(tiny_model):
    rng = np.random.default_rng(0)
    chips = rng.integers(0, 256, (3, 3, 64, 64), dtype=np.uint8)
    plain = create_predictor(tiny_model, tta="none")
    d4 = create_predictor(tiny_model, tta="d4")
    assert isinstance(d4, TTAPredictor) and d4.spec.tta == "d4"
    sym = d4_symmetric(chips)
    assert np.allclose(d4.predict(sym), plain.predict(sym), atol=1e-5)
    diff = np.abs(d4.predict(chips) - plain.predict(chips)).max()
    assert diff > 1e-3  # the random network is not invariant: the average differs
    flips = create_predictor(tiny_model, tta="flips")
    assert np.abs(flips.predict(chips) - plain.predict(chips)).max() > 1e-4


def test_torch_backend_averages_on_the_tensor(tmp_path):
    pytest.importorskip("torch")
    from scenetag.model.training.checkpoint import save_checkpoint

    spec = tiny_spec()
    path = save_checkpoint(tmp_path / "m.pt", small_model(spec), spec)
    rng = np.random.default_rng(1)
    chips = rng.integers(0, 256, (2, 3, 64, 64), dtype=np.uint8)
    plain = create_predictor(path, backend="torch", device="cpu")
    d4 = create_predictor(path, backend="torch", device="cpu", tta="d4")
    assert not isinstance(d4, TTAPredictor) and d4.spec.tta == "d4"  # done by the backend itself
    by_hand = average(plain.predict(views(chips, "d4")), "d4")
    assert np.allclose(d4.predict(chips), by_hand, atol=1e-5)
    assert np.abs(by_hand - plain.predict(chips)).max() > 1e-3
    assert np.allclose(d4.predict(d4_symmetric(chips)), plain.predict(d4_symmetric(chips)), atol=1e-5)


def test_the_batch_is_expanded_once_in_memory_never_read_again():
    inner = Counting(tiny_spec())
    tta = with_tta(inner, "d4")
    chips = np.zeros((5, 3, 8, 8), np.uint8)
    chips[:, :, 0, 0] = 255  # the top-left corner: 2 of the 8 views keep it there (identity, diagonal mirror)
    out = tta.predict(chips)
    assert inner.calls == [40]  # one call, the 8 views of the 5 chips
    assert np.allclose(out, 2 / 8)
    assert not hasattr(tta, "submit")  # the asynchronous path would bypass the views


def test_the_job_reads_each_chip_once_with_d4(make_raster, tmp_path, monkeypatch):
    import scenetag
    from scenetag.tiler.reader import ChipReader

    inner = Counting(tiny_spec())
    read = []
    original = ChipReader.read_run

    def counting_read_run(self, cells, *a, **k):
        read.extend(cells)
        return original(self, cells, *a, **k)
    monkeypatch.setattr(ChipReader, "read_run", counting_read_run)
    monkeypatch.setattr(ChipReader, "read", lambda self, cell: counting_read_run(self, [cell]))
    scene = make_raster(width=128, height=128)
    result = scenetag.run_scene(scene, tmp_path / "o.gpkg", model=with_tta(inner, "d4"), readers=1,
                                reader="threads")
    n = result.n_chips_classified
    assert n == 4 and sum(inner.calls) == 8 * n  # every view classified...
    assert len(read) == n  # ...from chips read once each


def test_other_tta_than_the_spec_warns(tiny_model, caplog):
    with caplog.at_level(logging.WARNING):
        create_predictor(tiny_model, tta="flips")
    assert "fitted with TTA 'none'" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        create_predictor(tiny_model)
    assert not caplog.text
