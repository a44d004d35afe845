"""INT8 post-training quantisation of an ONNX model with NNCF, and what it costs in accuracy.

:func:`quantize_model` quantises with NNCF's ONNX backend (QuantizeLinear /
DequantizeLinear pairs, so the result is still one ONNX file with the spec in
its metadata, and both OpenVINO and ONNX Runtime run it), calibrating on chips
of the model's *training* split.  It then scores the fp32 and the INT8 model on
the *validation* split (the split evaluate and calibrate use) and compares them:
the share of tag decisions (chip x label, at the spec's thresholds) that change,
samples-F2 and macro-F1 of each.  The comparison goes into the INT8 model's spec
(``extra["quantization"]``) and a model card beside it.  A model over the
accuracy bar (:data:`MAX_TAG_CHANGE`, :data:`MAX_F2_DROP`) is refused unless
forced.

The recipes (:data:`RECIPES`) are the ones tried; what each gave on the default
model is in docs/performance.md ("INT8").
"""

from __future__ import annotations

import contextlib
import logging
import sys
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from scenetag.atomic import atomic_path
from scenetag.errors import DataError, ModelError, OptionError, OutputExistsError, require
from scenetag.hashing import file_sha256
from scenetag.model.preprocess import normalize
from scenetag.model.spec import QUANTIZATION_KEY, ModelSpec
from scenetag.model.training.data import load_images, read_labels
from scenetag.model.training.evaluation import default_labels_csv, predict_all, split_names
from scenetag.model.training.metrics import evaluate

log = logging.getLogger(__name__)

#: Most tag decisions (chip x label) the INT8 model may change on the validation split.
MAX_TAG_CHANGE = 0.01
#: Most samples-F2 the INT8 model may lose on the validation split.
MAX_F2_DROP = 0.01
#: Chips of the training split NNCF calibrates on (its default subset size).
CALIBRATION_CHIPS = 300
#: Key of the comparison in the spec's ``extra``.
SPEC_KEY = QUANTIZATION_KEY


@dataclass(frozen=True)
class Recipe:
    """How NNCF quantises: its preset, what stays in fp32, and which bias correction."""

    name: str
    description: str
    #: nncf.QuantizationPreset name: "mixed" (asymmetric activations) or "performance".
    preset: str = "mixed"
    #: Keep the first convolution (the stem, which sees the raw normalised pixels) in fp32.
    keep_stem: bool = False
    #: Keep the classifier (the Gemm before the sigmoid) in fp32.
    keep_head: bool = False
    #: NNCF's fast bias correction (True) or the full one (False, slower).
    fast_bias_correction: bool = True
    #: Extra NNCF advanced parameters, by name.
    advanced: dict = field(default_factory=dict)
    #: nncf.quantize_with_accuracy_control: layers are put back into fp32, most sensitive first,
    #: until the INT8 model agrees with the fp32 one on held-out training chips (:func:`agreement`).
    accuracy_control: bool = False


#: The recipes tried (docs/performance.md, "INT8"); :data:`DEFAULT_RECIPE` is the command's default.
RECIPES: dict[str, Recipe] = {r.name: r for r in (
    Recipe("plain", "NNCF defaults: mixed preset, every Conv and Gemm in INT8, fast bias correction"),
    Recipe("keep-ends", "first convolution and classifier kept in fp32", keep_stem=True, keep_head=True),
    Recipe("keep-ends-bc", "first convolution and classifier in fp32, full bias correction",
           keep_stem=True, keep_head=True, fast_bias_correction=False),
    Recipe("keep-head", "classifier kept in fp32", keep_head=True),
    Recipe("accuracy-control", "first convolution and classifier in fp32, then NNCF's accuracy control "
           "puts the most sensitive layers back into fp32 until the tags agree with fp32's on held-out "
           "training chips", keep_stem=True, keep_head=True, accuracy_control=True),
)}
#: The largest tag disagreement with fp32 that accuracy control allows on held-out training chips:
#: half the bar, to leave a margin for the validation split.
CONTROL_MAX_CHANGE = MAX_TAG_CHANGE / 2
#: Layers accuracy control ranks on (held-out chips) and times it may put layers back.
CONTROL_RANKING_CHIPS = 64
CONTROL_ITERATIONS = 8
#: The recipe that came closest to the bar on the default model (1.36% of tag decisions, -0.0099
#: samples-F2; the bar is 1%): none met it (docs/performance.md, "INT8").
DEFAULT_RECIPE = "keep-ends-bc"


@dataclass
class Quantized:
    """The outcome of :func:`quantize_model`: the comparison, and where the model was written (if it was)."""

    comparison: dict
    spec: ModelSpec
    out: Path | None = None
    card: Path | None = None

    @property
    def within_bar(self) -> bool:
        """Whether the INT8 model met the accuracy bar."""
        return bool(self.comparison["within_bar"])


def card_path(out: str | Path) -> Path:
    """The model card written beside an INT8 model: ``NAME.md``."""
    return Path(out).with_suffix(".md")


def stem_and_head(proto) -> list[str]:
    """Names of the first convolution (the one that reads the graph input) and the last Gemm/MatMul of ``proto``."""
    nodes = list(proto.graph.node)
    convs = [n for n in nodes if n.op_type == "Conv"]
    heads = [n for n in nodes if n.op_type in ("Gemm", "MatMul")]
    if not convs or not heads:
        raise ModelError("the model has no Conv or no Gemm/MatMul node: the keep-stem/keep-head recipes need both")
    return [convs[0].name, heads[-1].name]


@contextlib.contextmanager
def _nncf_on_stderr():
    """NNCF's log and progress bars on stderr, not stdout (where commands print their results)."""
    import nncf  # noqa: F401 - sets up its logger
    from nncf.common.logging.logger import nncf_logger

    handlers = [h for h in nncf_logger.handlers if isinstance(h, logging.StreamHandler)]
    before = [h.stream for h in handlers]
    for h in handlers:
        h.setStream(sys.stderr)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        for h, stream in zip(handlers, before):
            h.setStream(stream)


def quantize_onnx(proto, spec: ModelSpec, chips: np.ndarray, recipe: Recipe, holdout: np.ndarray | None = None):
    """An INT8 copy (QDQ) of the ONNX ``proto``, calibrated on uint8 ``chips`` with NNCF.

    ``holdout`` (uint8 chips not in ``chips``; default ``chips``) is what
    accuracy control compares the INT8 model's tags with the fp32 model's on.
    """
    nncf = require("nncf", "openvino")
    input_name = proto.graph.input[0].name
    ignored = stem_and_head(proto)
    names = [n for n, keep in zip(ignored, (recipe.keep_stem, recipe.keep_head)) if keep]
    dataset = nncf.Dataset(range(len(chips)), lambda i: {input_name: normalize(chips[i:i + 1], spec)})
    common = dict(preset=getattr(nncf.QuantizationPreset, recipe.preset.upper()), subset_size=len(chips),
                  fast_bias_correction=recipe.fast_bias_correction,
                  ignored_scope=nncf.IgnoredScope(names=names) if names else None)
    advanced = nncf.AdvancedQuantizationParameters(**recipe.advanced) if recipe.advanced else None
    log.info("quantising with recipe %s on %d chips (fp32: %s)", recipe.name, len(chips), names or "none")
    if not recipe.accuracy_control:
        return nncf.quantize(proto, dataset, **common, **({"advanced_parameters": advanced} if advanced else {}))
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

    holdout = chips if holdout is None else holdout
    reference = spec.tags(_onnx_probs(proto, spec, holdout))
    batches = [holdout[i:i + 8] for i in range(0, len(holdout), 8)]
    validation = nncf.Dataset(range(len(batches)), lambda i: {input_name: normalize(batches[i], spec)})

    def agreement(model, items) -> tuple[float, list[float]]:
        """Share of the fp32 model's tag decisions on the held-out chips that ``model`` keeps, and per item.

        The per-item values let NNCF rank layers without calling this once per item.
        """
        index = list(items)
        probs = _onnx_probs(model, spec, np.concatenate([batches[i] for i in index]))
        same = spec.tags(probs) == np.concatenate([reference[i * 8:i * 8 + len(batches[i])] for i in index])
        bounds = np.cumsum([0] + [len(batches[i]) for i in index])
        return float(same.mean()), [float(same[a:b].mean()) for a, b in zip(bounds[:-1], bounds[1:])]

    return nncf.quantize_with_accuracy_control(
        proto, dataset, validation, agreement, max_drop=CONTROL_MAX_CHANGE, drop_type=nncf.DropType.ABSOLUTE,
        **common, **({"advanced_quantization_parameters": advanced} if advanced else {}),
        advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(
            ranking_subset_size=min(CONTROL_RANKING_CHIPS // 8, len(batches)) or 1,
            max_num_iterations=CONTROL_ITERATIONS))


def _onnx_probs(proto, spec: ModelSpec, chips: np.ndarray) -> np.ndarray:
    """Probabilities of an in-memory ONNX model on uint8 ``chips`` (ONNX Runtime, as NNCF's ONNX backend uses)."""
    from scenetag.model.backends.onnx_backend import OnnxPredictor

    predictor = OnnxPredictor("(being quantised)", device="cpu", spec=spec, model_bytes=proto.SerializeToString())
    return predict_all(predictor, chips)


def compare(spec: ModelSpec, targets: np.ndarray, fp32: np.ndarray, int8: np.ndarray,
            min_support: int = 5, max_tag_change: float = MAX_TAG_CHANGE,
            max_f2_drop: float = MAX_F2_DROP) -> dict:
    """The INT8 model's accuracy against the fp32 model's on the same labelled chips, JSON-ready.

    ``tag_decisions_changed`` is the share of (chip, label) decisions at the
    spec's thresholds that differ; samples-F2 and macro-F1 are those of
    :func:`~scenetag.model.training.metrics.evaluate` for each model, on the
    tags the spec makes (its label structure applied, as in ``run``).
    """
    changed = float(np.mean(spec.tags(fp32) != spec.tags(int8)))
    # Scored on the tags the job makes: thresholds, then the spec's label structure.
    m32 = evaluate(targets, fp32, spec.thresholds, spec.labels, min_support, structure=spec.structure)
    m8 = evaluate(targets, int8, spec.thresholds, spec.labels, min_support, structure=spec.structure)
    drop = m32["samples_f2"] - m8["samples_f2"]
    return {
        "n_images": int(len(targets)),
        "tag_decisions_changed": changed,
        "chips_with_a_changed_tag": float(np.mean((spec.tags(fp32) != spec.tags(int8)).any(axis=1))),
        "max_abs_probability_change": float(np.abs(fp32 - int8).max()) if len(fp32) else 0.0,
        "samples_f2": {"fp32": m32["samples_f2"], "int8": m8["samples_f2"]},
        "samples_f2_drop": float(drop),
        "macro_f1": {"fp32": m32["macro_f1"], "int8": m8["macro_f1"]},
        "macro_f1_supported": {"fp32": m32["macro_f1_supported"], "int8": m8["macro_f1_supported"]},
        "bar": {"max_tag_decisions_changed": max_tag_change, "max_samples_f2_drop": max_f2_drop},
        "within_bar": bool(changed <= max_tag_change and drop <= max_f2_drop),
    }


def refusal(comparison: dict) -> str:
    """Why a comparison misses the bar, in one line (empty if it meets it)."""
    bar = comparison["bar"]
    misses = []
    if comparison["tag_decisions_changed"] > bar["max_tag_decisions_changed"]:
        misses.append(f"it changes {comparison['tag_decisions_changed']:.2%} of tag decisions "
                      f"(at most {bar['max_tag_decisions_changed']:.2%})")
    if comparison["samples_f2_drop"] > bar["max_samples_f2_drop"]:
        f2 = comparison["samples_f2"]
        misses.append(f"samples-F2 drops by {comparison['samples_f2_drop']:.4f} ({f2['fp32']:.4f} -> "
                      f"{f2['int8']:.4f}; at most {bar['max_samples_f2_drop']})")
    return " and ".join(misses)


def _set_spec(proto, spec: ModelSpec) -> None:
    from scenetag.model.training.export import set_onnx_spec

    set_onnx_spec(proto, spec)


def _scored(path: Path, backend: str, images: np.ndarray, spec: ModelSpec) -> np.ndarray:
    from scenetag.model.backends import create_predictor

    return predict_all(create_predictor(path, backend=backend, device="cpu", spec=spec), images)


def quantize_model(
    model_path: str | Path,
    images_dir: str | Path,
    out: str | Path,
    labels_csv: str | Path | None = None,
    *,
    recipe: str = DEFAULT_RECIPE,
    calibration_chips: int = CALIBRATION_CHIPS,
    split_file: str | Path | None = None,
    backend: str = "auto",
    force: bool = False,
    overwrite: bool = False,
    min_support: int = 5,
    max_tag_change: float = MAX_TAG_CHANGE,
    max_f2_drop: float = MAX_F2_DROP,
    on_wrong_size: str = "refuse",
) -> Quantized:
    """Quantise the ONNX model at ``model_path`` to INT8 and write it to ``out`` if it meets the bar.

    Calibrates on up to ``calibration_chips`` chips of the model's training
    split, scores both models on its validation split with ``backend`` (on the
    CPU), and writes ``out`` (with the comparison in its spec) and its model
    card (:func:`card_path`) when the INT8 model changes at most
    ``max_tag_change`` of tag decisions and loses at most ``max_f2_drop`` of
    samples-F2, or when ``force``.  Otherwise raises :class:`ModelError` and
    writes nothing.
    """
    from scenetag.model.backends.registry import AUTO, auto_backend

    onnx = require("onnx", "torch")
    model_path, out = Path(model_path), Path(out)
    backend_name = auto_backend(model_path, "cpu") if backend == AUTO else backend
    if recipe not in RECIPES:
        raise OptionError(f"--recipe {recipe!r} is unknown: use one of {', '.join(RECIPES)}")
    if model_path.suffix.lower() != ".onnx":
        raise OptionError(f"MODEL {model_path.name!r} is not an ONNX file: export it first with `scenetag export`")
    if out.suffix.lower() != ".onnx":
        raise OptionError(f"--output {out.name!r}: the INT8 model is an ONNX file, name it NAME.onnx")
    if out.resolve() == model_path.resolve():
        raise OptionError(f"--output {str(out)!r} is MODEL itself: write the INT8 model beside it")
    for path in (out, card_path(out)):
        if path.exists() and not overwrite:
            raise OutputExistsError(f"{path} exists: pass --overwrite to replace it")
    proto = onnx.load(str(model_path))
    from scenetag.model.backends.onnx_backend import read_onnx_spec

    spec = read_onnx_spec(model_path)
    table = read_labels(Path(labels_csv) if labels_csv else default_labels_csv(images_dir), spec.labels)
    train, _ = split_names(table, spec, "train", split_file, model_path)
    val, val_source = split_names(table, spec, "val", split_file, model_path)
    if not train or not val:
        raise DataError(f"the model's split has {len(train)} training and {len(val)} validation images: "
                        "quantisation needs both (pass --split-file)")
    # Evenly spread over the training split (it is stored in a fixed, shuffled order).
    pick = np.unique(np.linspace(0, len(train) - 1, min(calibration_chips, len(train))).astype(int))
    calib = load_images(images_dir, [train[i] for i in pick], spec.chip_size, on_wrong_size)
    picked = set(pick.tolist())
    rest = [name for i, name in enumerate(train) if i not in picked][:CALIBRATION_CHIPS]
    holdout = (load_images(images_dir, rest, spec.chip_size, on_wrong_size)
               if rest and RECIPES[recipe].accuracy_control else None)
    val_table = table.subset(val)
    val_images = load_images(images_dir, val_table.names, spec.chip_size, on_wrong_size)

    with _nncf_on_stderr():
        quantized = quantize_onnx(proto, spec, calib, RECIPES[recipe], holdout)
    with tempfile.TemporaryDirectory(prefix="scenetag-int8-", dir=out.parent if out.parent.exists() else None) as tmp:
        tmp_model = Path(tmp) / out.name
        onnx.save(quantized, str(tmp_model))
        fp32 = _scored(model_path, backend_name, val_images, spec)
        int8 = _scored(tmp_model, backend_name, val_images, spec)
    comparison = compare(spec, val_table.targets, fp32, int8, min_support, max_tag_change, max_f2_drop)
    comparison.update({
        "source": model_path.name, "source_sha256": file_sha256(model_path),
        "recipe": recipe, "recipe_description": RECIPES[recipe].description,
        "calibration": {"split": "train", "n_chips": int(len(calib))},
        "evaluation": {"split": "val", "split_source": val_source, "backend": backend_name},
        "forced": bool(force and not comparison["within_bar"]),
    })
    int8_spec = replace(spec, name=f"{spec.name}-int8", extra={**spec.extra, SPEC_KEY: comparison})
    result = Quantized(comparison, int8_spec)
    why = refusal(comparison)
    if why and not force:
        raise ModelError(f"the INT8 model was not written: {why}; try another --recipe or more "
                         f"--calibration-chips, or pass --force to write it anyway")
    _set_spec(quantized, int8_spec)
    with atomic_path(out, replace=overwrite) as tmp_out:
        onnx.save(quantized, str(tmp_out))
    with atomic_path(card_path(out), replace=overwrite) as tmp_card:
        tmp_card.write_text(model_card(int8_spec, comparison, out.name))
    result.out, result.card = out, card_path(out)
    return result


def model_card(spec: ModelSpec, comparison: dict, filename: str) -> str:
    """A short markdown model card for an INT8 model: where it came from and what it costs in accuracy."""
    c = comparison
    verdict = ("meets" if c["within_bar"] else "**misses**") + " the accuracy bar"
    if c["forced"]:
        verdict += " (written with --force)"
    rows = [
        ("tag decisions changed (chip x label)", f"{c['tag_decisions_changed']:.2%}",
         f"at most {c['bar']['max_tag_decisions_changed']:.2%}"),
        ("chips with any changed tag", f"{c['chips_with_a_changed_tag']:.2%}", ""),
        ("samples-F2 fp32 -> INT8", f"{c['samples_f2']['fp32']:.4f} -> {c['samples_f2']['int8']:.4f}",
         f"drop at most {c['bar']['max_samples_f2_drop']}"),
        ("macro-F1 fp32 -> INT8", f"{c['macro_f1']['fp32']:.4f} -> {c['macro_f1']['int8']:.4f}", ""),
        ("largest probability change", f"{c['max_abs_probability_change']:.4f}", ""),
    ]
    table = "\n".join(f"| {a} | {b} | {d} |" for a, b, d in rows)
    return f"""# {spec.name}: INT8 model

`{filename}` is an INT8 (NNCF post-training quantisation, QuantizeLinear/DequantizeLinear
ONNX) copy of `{c['source']}` (sha256 `{c['source_sha256'][:16]}`), made by
`scenetag quantize` with recipe `{c['recipe']}`: {c['recipe_description']}.
Labels, thresholds, bands and preprocessing are the fp32 model's (the spec in the ONNX
metadata, with this comparison under `extra.{SPEC_KEY}`).

- Calibration: {c['calibration']['n_chips']} chips of the training split.
- Evaluation: the validation split ({c['evaluation']['split_source']}), {c['n_images']} chips,
  both models on {c['evaluation']['backend']}, at the spec's thresholds.

It {verdict}:

| | value | bar |
|---|---|---|
{table}

Run it like any ONNX model (`--model {filename}`); OpenVINO runs it with INT8 kernels
(`--backend openvino`, what `auto` takes on the CPU), ONNX Runtime too.
"""
