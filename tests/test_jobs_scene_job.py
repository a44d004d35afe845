"""The scene job on every real scene and on generated rasters: what it writes is right."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pyogrio
import pytest
import rasterio
from rasterio.windows import Window, bounds as window_bounds

from scenetag.jobs.options import RunOptions
from scenetag.jobs.classify import classify_cells
from scenetag.jobs.runner import run_scene
from scenetag.jobs.planning import plan_scene
from scenetag.model.preprocess import normalize
from scenetag.outputs_schema.schema import CHIPS_LAYER, LABEL_FIELDS, RUN_FIELDS, RUNS_LAYER, OutputSchema, tag_names
from tests.conftest import SCENES, real_scene, real_scenes

# Scenes the job must refuse, with the error class and part of the message.
REFUSED = {"no_geotransform_rpcs.tif": "no geotransform.*RPCs.*gdalwarp -rpc"}
# The scene's bands in the RGB model's order, where colour interpretation would mislead.
BANDS = {"planetscope_borneo_3m_analytic.tif": (3, 2, 1), "planetscope_3m_epsg4326.tif": (3, 2, 1),
         "all_nodata.tif": (3, 2, 1), "landsat_pucallpa_2020_epsg4326.tif": (3, 4, 2)}


def read_layers(path):
    return {name: pyogrio.read_dataframe(path, layer=name) for name, _ in pyogrio.list_layers(path)}


def check_output(path, plan, predictor, options):
    """Every property the issue asks of a scene's GeoPackage."""
    spec = predictor.spec
    schema = OutputSchema(spec.labels)
    layers = {k: v for k, v in pyogrio.list_layers(path) if k != "layer_styles"}  # QGIS styles table
    assert list(layers) == list(schema.layers)
    assert layers[CHIPS_LAYER] == "Polygon"
    assert all(layers[name] == "MultiPolygon" for name in schema.label_layers)
    chips = pyogrio.read_dataframe(path, layer=CHIPS_LAYER)
    runs = pyogrio.read_dataframe(path, layer=RUNS_LAYER)
    assert list(chips.columns[:-1]) == list(schema.chip_columns)
    assert list(runs.columns) == [f.name for f in RUN_FIELDS]

    # Chip counts: classified + skipped-for-nodata is the grid; the grid follows its formula.
    run = runs.iloc[0]
    assert run.n_chips_classified == len(chips)
    assert run.n_chips_classified + run.n_chips_skipped_nodata == len(plan.grid)
    assert run.n_chips_total == len(plan.grid) + plan.grid.n_skipped

    # Skips agree with GDAL's mask, computed here independently.
    with rasterio.open(plan.info.path) as src:
        expected_valid = []
        for cell in plan.grid:
            m = src.dataset_mask(window=cell.window)
            frac = np.count_nonzero(m) / float(plan.spec.chip_size ** 2)
            if frac >= options.min_valid and frac > 0:
                expected_valid.append((cell.row, cell.col, frac))
    assert [(r, c) for r, c, _ in expected_valid] == list(zip(chips.row, chips.col))
    np.testing.assert_allclose(chips.valid_fraction, [f for *_, f in expected_valid], atol=1e-6)

    # Footprints are the windows read, in the scene's CRS.
    for rec, geom in zip(chips.itertuples(), chips.geometry):
        w = Window(rec.x_off, rec.y_off, rec.width, rec.height)
        np.testing.assert_allclose(geom.bounds, window_bounds(w, plan.info.transform), rtol=0, atol=1e-6)
    assert rasterio.crs.CRS.from_user_input(chips.crs) == plan.info.crs

    # Probabilities in [0, 1]; tags are exactly the labels at or above their thresholds.
    probs = chips[list(schema.prob_columns)].to_numpy()
    assert ((probs >= 0) & (probs <= 1)).all()
    thr = np.asarray(spec.thresholds)
    words = tag_names(spec.labels)
    for tags, p in zip(chips.tags, probs):
        assert tags.split() == [w for w, pi, t in zip(words, p, thr) if pi >= t]
    if len(chips):
        assert (chips.top_label == np.asarray(spec.labels)[probs.argmax(1)]).all()

    # Label layers: dissolved footprint of the tagged chips.
    for label, layer in zip(spec.labels, schema.label_layers):
        frame = pyogrio.read_dataframe(path, layer=layer)
        tagged = chips[chips[schema.prob_columns[spec.labels.index(label)]] >= spec.thresholds[spec.labels.index(label)]]
        assert list(frame.columns[:-1]) == [f.name for f in LABEL_FIELDS]
        if len(tagged) == 0:
            assert len(frame) == 0
            continue
        assert frame.n_chips.iloc[0] == len(tagged)
        assert frame.label.iloc[0] == label
        assert frame.geometry.iloc[0].area == pytest.approx(tagged.geometry.union_all().area, rel=1e-9)

    # The runs row is complete.
    for f in RUN_FIELDS:
        value = run[f.name]
        assert value is not None and not (isinstance(value, float) and np.isnan(value)), f.name
        if f.dtype == "str" and f.name != "reason":
            assert value != "", f.name
    assert json.loads(run.model_spec)["labels"] == list(spec.labels)
    assert run.model_sha256 == predictor.sha256
    assert len(run.scene_sha256) == 64
    return chips, run


@pytest.mark.parametrize("name", real_scenes() or ["(shared data absent)"])
def test_every_real_scene(name, predictor, tmp_path):
    scene = real_scene(name)
    options = RunOptions(bands=BANDS.get(name))
    out = tmp_path / "out.gpkg"
    if name in REFUSED:
        from scenetag.errors import GeoreferenceError

        with pytest.raises(GeoreferenceError, match=REFUSED[name]):
            run_scene(scene, out, predictor, options)
        assert list(tmp_path.iterdir()) == []
        return
    result = run_scene(scene, out, predictor, options)
    plan = plan_scene(scene, predictor.spec, options)
    chips, run = check_output(out, plan, predictor, options)
    assert result.n_chips_classified == len(chips)
    assert [p.name for p in tmp_path.iterdir()] == ["out.gpkg"], "no temporary files left behind"
    if name == "all_nodata.tif":
        assert len(chips) == 0 and run.status == "empty" and "valid pixels" in run.reason
    else:
        assert run.status == "ok" and len(chips) > 0


def test_probabilities_match_the_model_on_chips_read_directly(predictor, tmp_path):
    """End to end, a chip's probabilities are the model's on that window's pixels."""
    scene = real_scene("landsat7_rgb_byte.tif")
    out = tmp_path / "o.gpkg"
    run_scene(scene, out, predictor, RunOptions())
    chips = pyogrio.read_dataframe(out, layer="chips")
    schema = OutputSchema(predictor.spec.labels)
    # The model's own ONNX Runtime session, whichever backend `auto` took for the job.
    session = ort.InferenceSession(str(predictor.path), providers=["CPUExecutionProvider"])
    with rasterio.open(scene) as src:
        for rec in chips.head(5).itertuples():
            w = Window(rec.x_off, rec.y_off, rec.width, rec.height)
            data = src.read([1, 2, 3], window=w)
            valid = src.dataset_mask(window=w) > 0
            data = np.where(valid[None], data, 0).astype(np.uint8)
            x = normalize(data[None], predictor.spec)
            (p,) = session.run(None, {session.get_inputs()[0].name: x})
            got = np.asarray([getattr(rec, c) for c in schema.prob_columns])
            np.testing.assert_allclose(got, p[0], atol=1e-5)


def test_uint16_scene_is_stretched_once_per_scene(predictor, make_raster, tmp_path, monkeypatch):
    import scenetag.tiler.scaling

    samples = []
    real = scenetag.tiler.scaling.decimated_read
    monkeypatch.setattr(scenetag.tiler.scaling, "decimated_read", lambda *a, **k: samples.append(1) or real(*a, **k))
    data = np.random.default_rng(1).integers(1000, 5000, size=(3, 130, 140)).astype("uint16")
    scene = make_raster("u16.tif", data)
    plan = plan_scene(scene, predictor.spec, RunOptions())
    table = classify_cells(plan, predictor)
    assert len(table) == len(plan.grid) and len(samples) == 1  # every chip read, the scene sampled once
    flat = data.reshape(3, -1)
    np.testing.assert_allclose(plan.stretch.low, np.percentile(flat, 2, axis=1), rtol=1e-6)
    np.testing.assert_allclose(plan.stretch.high, np.percentile(flat, 98, axis=1), rtol=1e-6)
    with plan.reader() as reader:
        chip = reader.read(next(iter(plan.grid)))
    assert chip.pixels.dtype == np.uint8 and chip.pixels.min() == 0 and chip.pixels.max() == 255


def test_stretch_of_a_large_scene_without_overviews_samples_whole_blocks(predictor, make_raster):
    """Without overviews the stretch reads a spread of whole blocks (not every block), subsampled."""
    from scenetag.tiler.scaling import MAX_SAMPLE
    from scenetag.tiler.scene import decimated_read

    rng = np.random.default_rng(2)
    data = rng.integers(1000, 5000, size=(3, 1100, 1300)).astype("uint16")
    scene = make_raster("big.tif", data, TILED="YES", BLOCKXSIZE=256, BLOCKYSIZE=256)
    with rasterio.open(scene) as src:
        assert not src.overviews(1)
        sample = decimated_read(src, [1, 2, 3])
    # 4 x 5 whole 256-px blocks, side by side, more values than the percentiles take.
    assert sample.shape == (3, 1, 4 * 5 * 256 * 256) and sample[0].count() > MAX_SAMPLE
    plan = plan_scene(scene, predictor.spec, RunOptions())
    flat = data.reshape(3, -1)
    np.testing.assert_allclose(plan.stretch.low, np.percentile(flat, 2, axis=1), rtol=0.01)
    np.testing.assert_allclose(plan.stretch.high, np.percentile(flat, 98, axis=1), rtol=0.01)


def test_stretch_sample_of_a_striped_scene_spans_many_rows(make_raster):
    """In a file of one-row strips, the sample covers hundreds of rows, not a few scan lines."""
    from scenetag.tiler.scene import decimated_read

    height, width = 2000, 1500
    rows = np.broadcast_to(np.arange(height, dtype="uint16")[:, None], (height, width))
    scene = make_raster("striped.tif", np.stack([rows] * 3), BLOCKYSIZE=1)
    with rasterio.open(scene) as src:
        assert src.block_shapes[0] == (1, width) and not src.overviews(1)
        sample = decimated_read(src, [1])
    distinct_rows = np.unique(sample.compressed())
    assert len(distinct_rows) >= 256
    assert distinct_rows.min() < height / 8 and distinct_rows.max() > height * 7 / 8  # spread over the scene


@pytest.mark.parametrize("edge, n", [("shift", 3 * 3), ("pad", 3 * 3), ("skip", 2 * 2)])
def test_edge_policies_on_generated_raster(predictor, make_raster, tmp_path, edge, n):
    scene = make_raster(width=150, height=140)  # 64-px chips: 2 full + a partial per axis
    out = tmp_path / f"{edge}.gpkg"
    result = run_scene(scene, out, predictor, RunOptions(edge=edge, min_valid=0.05))  # padded chips are part invalid
    assert result.n_chips_classified == n
    assert result.n_chips_skipped_edge == (9 - 4 if edge == "skip" else 0)
    chips = pyogrio.read_dataframe(out, layer="chips")
    right = chips[chips.col == chips.col.max()]
    if edge == "shift":
        assert set(right.x_off) == {150 - 64} and set(right.width) == {64}
    if edge == "pad":
        assert set(right.x_off) == {128} and set(right.width) == {22}


def test_alpha_and_nodata_masks_decide_validity(predictor, make_raster, tmp_path):
    data = np.full((4, 128, 128), 200, np.uint8)
    data[3] = 255
    data[3, :, :64] = 0  # left half transparent
    scene = make_raster("alpha.tif", data, photometric="RGB", alpha="YES")
    result = run_scene(scene, tmp_path / "a.gpkg", predictor, RunOptions(min_valid=0.5))
    assert result.n_chips_classified == 2 and result.n_chips_skipped_nodata == 2
    data = np.full((3, 128, 128), 7, np.uint8)
    data[:, 64:, :] = 0
    scene = make_raster("nd.tif", data, nodata=0)
    result = run_scene(scene, tmp_path / "n.gpkg", predictor, RunOptions(min_valid=0.5))
    assert result.n_chips_classified == 2 and result.n_chips_skipped_nodata == 2


def test_resample_reads_at_the_model_resolution(predictor, make_raster, tmp_path):
    # 5 m scene, 10 m model: each chip covers 128 scene pixels.
    from affine import Affine

    scene = make_raster(width=256, height=256, transform=Affine(5, 0, 500000, 0, -5, 4000000))
    plan = plan_scene(scene, predictor.spec, RunOptions(resample=True))
    assert plan.factor == pytest.approx(2.0)
    assert len(plan.grid) == 4 and {c.width for c in plan.grid} == {128}
    result = run_scene(scene, tmp_path / "r.gpkg", predictor, RunOptions(resample=True))
    assert result.n_chips_classified == 4


def test_geographic_scene_resolution_in_metres():
    from scenetag.tiler.scene import open_scene

    info = open_scene(real_scene("planetscope_3m_epsg4326.tif"))
    assert 2.0 < info.resolution_m < 4.5


def test_every_scene_with_an_expectation_is_in_the_scenes_folder():
    """The per-scene expectations above must not go unused because a scene was renamed or dropped."""
    if not SCENES.is_dir():
        pytest.skip(f"{SCENES} is absent")
    assert set(REFUSED) | set(BANDS) <= set(real_scenes())


def test_sparse_scene_chips_match_the_same_pixels_cut_out_alone(predictor, make_raster):
    """A large sparse uint16 scene is tagged as its valid patch cut out alone is (same stretch, same chips)."""
    from rasterio.transform import from_origin

    from tests.test_tiler_scaling import PATCH, sparse_scene

    path, patch = sparse_scene(make_raster)
    cutout = make_raster("cutout.tif", patch, nodata=0, transform=from_origin(0, 0, 10, 10))
    big = plan_scene(path, predictor.spec, RunOptions())
    alone = plan_scene(cutout, predictor.spec, RunOptions())
    np.testing.assert_allclose(big.stretch.low, alone.stretch.low, rtol=1e-6)
    np.testing.assert_allclose(big.stretch.high, alone.stretch.high, rtol=1e-6)
    chip = predictor.spec.chip_size
    inside = [c for c in big.grid if PATCH[0] <= c.row_off < PATCH[1] and PATCH[0] <= c.col_off < PATCH[1]]
    got = classify_cells(big, predictor, inside)
    want = classify_cells(alone, predictor)
    assert len(got) == len(want) == ((PATCH[1] - PATCH[0]) // chip) ** 2
    np.testing.assert_allclose(got.probs, want.probs, atol=1e-6)
def huge_vrt(path, size=100_000):
    """A ``size`` x ``size`` uint8 scene that costs nothing on disk: a GDAL VRT with no sources (all zeros).

    uint8 needs no stretch, so planning it reads no pixel.
    """
    bands = "".join(f'<VRTRasterBand dataType="Byte" band="{b}"><ColorInterp>{ci}</ColorInterp></VRTRasterBand>'
                    for b, ci in enumerate(("Red", "Green", "Blue"), 1))
    path.write_text(
        f'<VRTDataset rasterXSize="{size}" rasterYSize="{size}"><SRS>EPSG:32633</SRS>'
        f"<GeoTransform>500000, 10, 0, 4000000, 0, -10</GeoTransform>{bands}</VRTDataset>")
    return path


def test_planning_a_huge_scene_keeps_memory_flat(tmp_path, predictor):
    """Stride 16 on a 100 000 px scene is 39 million chips: the plan, its size and its strips stay small."""
    import tracemalloc

    from scenetag.jobs.cluster import DEFAULT_CHIPS_PER_TASK
    from scenetag.tiler.feed import run_shape

    scene = huge_vrt(tmp_path / "huge.vrt")
    tracemalloc.start()
    try:
        plan = plan_scene(scene, predictor.spec, RunOptions(stride=16, max_chips=10**9))
        n_rows, n_cols = plan.grid.shape
        assert len(plan.grid) == n_rows * n_cols == ((100_000 - 64) // 16 + 1) ** 2
        # What the scene job does with it: cut it into a cluster's strips, and read them run by run.
        strips = plan.grid.strips(max(1, DEFAULT_CHIPS_PER_TASK // n_cols))
        assert len(strips) == n_rows and sum(map(len, strips)) == len(plan.grid)
        assert run_shape(plan.grid) == (32, n_rows * -(-n_cols // 32))
        assert next(iter(plan.grid)).window.width == 64
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 200 * 2**20, f"planning took {peak / 2**20:.0f} MiB"
    # By default, a grid this size is refused when it is planned.
    from scenetag.errors import ChipLimitError

    with pytest.raises(ChipLimitError, match="would classify 39,025,009 chips.*--max-chips 39025009"):
        plan_scene(scene, predictor.spec, RunOptions(stride=16))
