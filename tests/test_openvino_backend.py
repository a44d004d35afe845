"""OpenVINO backend: the same probabilities as ONNX Runtime on real chips, asynchronous infer requests, auto selection.

Skips, saying why, where the ``openvino`` extra is not installed (the missing-extra
error itself is tested without it).
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from scenetag.errors import MissingDependencyError, ModelError, ModelLoadError, ModelSpecError, OptionError
from scenetag.model.backends import AsyncPredictor, Predictor, Submitter, create_predictor
from scenetag.model.backends import openvino_backend
from scenetag.model.backends.base import queues_work
from scenetag.model.backends.onnx_backend import OnnxPredictor
from scenetag.model.backends.registry import auto_backend

needs_openvino = pytest.mark.skipif(not openvino_backend.available(),
                                    reason="openvino is not installed: pip install 'scenetag[openvino]'")


def chips(n, seed=0, size=64):
    return np.random.default_rng(seed).integers(0, 256, (n, 3, size, size), dtype=np.uint8)


@pytest.fixture(scope="module")
def default_model():
    from scenetag.model.default import DEFAULT_MODEL

    if not DEFAULT_MODEL.exists():
        pytest.skip(f"the default model {DEFAULT_MODEL} is absent")
    return DEFAULT_MODEL


@needs_openvino
def test_openvino_matches_onnx_runtime_on_real_chips(default_model):
    from tests.model_fixtures import real_chips

    x = real_chips(19)  # two full batches of 8 and a short one
    # Both through create_predictor, so both average the spec's TTA views the same way.
    ov = create_predictor(default_model, backend="openvino", device="cpu")
    ref = create_predictor(default_model, backend="onnx", device="cpu").predict(x)
    got = ov.predict(x)
    assert got.dtype == np.float32 and got.shape == ref.shape == (19, 17)
    assert float(np.abs(got - ref).max()) <= 1e-5
    assert ov.spec == OnnxPredictor(default_model, device="cpu").spec  # read from the same ONNX metadata


@needs_openvino
def test_it_is_an_async_predictor_that_queues_its_own_work(tiny_model):
    pred = create_predictor(tiny_model, backend="openvino")
    assert isinstance(pred, AsyncPredictor)
    assert isinstance(pred, Predictor) and queues_work(pred) and pred.on_gpu is False and pred.device == "cpu"
    ref = OnnxPredictor(tiny_model).predict(chips(11))
    x = chips(11)
    pending = [pred.submit([x[:4], x[4:9]]), pred.submit([x[9:]])]
    x[:] = 0  # the caller may reuse its memory once submit returns
    got = np.concatenate([p.result() for p in pending])
    np.testing.assert_allclose(got, ref, atol=1e-5)
    with Submitter(pred) as sub:  # the job's submitter hands batches to the predictor's own queue
        assert sub._pool is None
        np.testing.assert_allclose(sub.submit([chips(11)[:3]]).result(), ref[:3], atol=1e-5)
    assert pred.predict(np.zeros((0, 3, 64, 64), np.uint8)).shape == (0, 5)


@needs_openvino
def test_a_scene_runs_the_same_on_openvino_as_on_onnx_runtime(tiny_model, make_raster, tmp_path):
    """End to end on the reader-thread path, where batches overlap through the infer requests."""
    import pyogrio

    from scenetag.api import run_scene

    scene = make_raster("s.tif", np.random.default_rng(3).integers(0, 256, (3, 300, 400)).astype("uint8"))
    probs = {}
    for backend in ("openvino", "onnx"):
        out = tmp_path / f"{backend}.gpkg"
        run_scene(scene, out, backend=backend, model=tiny_model, device="cpu")
        frame = pyogrio.read_dataframe(out, layer="chips")
        probs[backend] = frame[[c for c in frame.columns if c.startswith("p_")]].to_numpy()
    assert len(probs["onnx"]) > 8  # more than one batch
    np.testing.assert_allclose(probs["openvino"], probs["onnx"], atol=1e-5)


@needs_openvino
def test_auto_takes_openvino_for_an_onnx_model_on_the_cpu(tiny_model, monkeypatch):
    from scenetag.model.backends.openvino_backend import OpenVinoPredictor

    assert isinstance(create_predictor(tiny_model), OpenVinoPredictor)
    assert isinstance(create_predictor(tiny_model, device="cpu"), OpenVinoPredictor)
    assert auto_backend(tiny_model, "cuda") == auto_backend(tiny_model, "cuda:1") == "onnx"  # GPUs: ONNX Runtime
    assert auto_backend(tiny_model, "cpu", precision="bf16") == "onnx"  # so the precision error stays ORT's
    assert auto_backend("m.pt", "cpu") == "torch"
    import scenetag.model.backends.registry as registry

    monkeypatch.setattr(registry, "_ort_has_gpu", lambda: True)  # onnxruntime-gpu installed: auto means a GPU
    assert auto_backend(tiny_model, "auto") == "onnx" and auto_backend(tiny_model, "cpu") == "openvino"
    monkeypatch.setattr(openvino_backend, "available", lambda: False)
    assert auto_backend(tiny_model, "cpu") == "onnx"


def test_without_openvino_the_backend_is_a_one_line_error_naming_the_extra(tiny_model, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino raises ImportError
    assert openvino_backend.available() is False
    with pytest.raises(MissingDependencyError, match=r"^openvino is not installed: pip install 'scenetag\[openvino\]'$"):
        create_predictor(tiny_model, backend="openvino")
    assert isinstance(create_predictor(tiny_model), OnnxPredictor)  # auto falls back to ONNX Runtime


def test_without_openvino_the_cli_says_which_extra_to_install(tiny_model, make_raster, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from cli import main

    monkeypatch.setitem(sys.modules, "openvino", None)
    scene = make_raster("s.tif")
    result = CliRunner().invoke(main, ["run", str(scene), "-o", str(tmp_path / "o.gpkg"), "--model", str(tiny_model),
                                       "--backend", "openvino"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == ["Error: openvino is not installed: pip install 'scenetag[openvino]'"]
    assert not (tmp_path / "o.gpkg").exists()


@needs_openvino
def test_its_output_is_checked_like_every_backend_s(tmp_path):
    from tests.model_fixtures import export_constant_model

    logits = export_constant_model(tmp_path / "logits.onnx", [3.0, -2.0, 0.5, 0.1, 0.2])
    with pytest.raises(ModelError, match="outside \\[0, 1\\].*logits"):
        create_predictor(logits, backend="openvino").predict(chips(2))
    nan = export_constant_model(tmp_path / "nan.onnx", [0.1, float("nan"), 0.5, 0.1, 0.2])
    with pytest.raises(ModelError, match="non-finite"):
        create_predictor(nan, backend="openvino").submit([chips(2)]).result()


@needs_openvino
def test_models_it_cannot_run_are_refused_when_loaded(tiny_model, tmp_path):
    from tests.model_fixtures import export_constant_model, tiny_spec

    with pytest.raises(ModelSpecError, match="takes 32x32 pixel chips but its spec says chip_size 64"):
        create_predictor(export_constant_model(tmp_path / "c.onnx", [0.1] * 5, input_hw=(32, 32)),
                         backend="openvino")
    with pytest.raises(ModelLoadError, match="runs on the CPU"):
        create_predictor(tiny_model, backend="openvino", device="cuda")
    with pytest.raises(OptionError, match="precision bf16"):
        create_predictor(tiny_model, backend="openvino", precision="bf16")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(ModelLoadError, match="could not be read by OpenVINO"):
        create_predictor(bad, backend="openvino")
    spec = tiny_spec()
    assert create_predictor(tiny_model, backend="openvino", spec=spec).spec is spec


EXIT_WITH_BATCHES_IN_FLIGHT = """
import sys
import numpy as np
from scenetag.model.backends import create_predictor
pred = create_predictor(sys.argv[1], backend="openvino")
chips = np.zeros((8, 3, 64, 64), np.uint8)
pending = [pred.submit([chips]) for _ in range(200)]  # far more than finish before the exit
sys.exit(143)  # as the CLI exits after SIGTERM, with nothing waiting for these
"""


@needs_openvino
def test_exiting_with_batches_in_flight_exits_as_asked(tiny_model):
    """The infer requests' callbacks take the GIL: run during finalisation, glibc aborts the process (-6)."""
    import subprocess

    for _ in range(2):  # without the drain, every exit here aborted
        proc = subprocess.run([sys.executable, "-c", EXIT_WITH_BATCHES_IN_FLIGHT, str(tiny_model)],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 143, proc.stderr[-2000:]
        assert "FATAL" not in proc.stderr
