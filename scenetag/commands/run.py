"""``scenetag run SCENE``: classify one scene into a GeoPackage."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from scenetag.commands.options import (announce_cluster, handle_errors, load_model, model_option,
                                       quiet_third_party, scheduler_option, spec_option)


def parse_bands(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, ...] | None:
    """``"3,2,1"`` → ``(3, 2, 1)``."""
    if not value:
        return None
    try:
        bands = tuple(int(v) for v in value.replace(" ", "").split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of band numbers, e.g. 3,2,1") from None
    if any(b < 1 for b in bands):
        raise click.BadParameter(f"band numbers are 1-based (as in GDAL), got {value!r}")
    return bands


def job_options(func):
    """Options shared by ``run`` and ``batch``."""
    opts = [
        model_option, spec_option,
        click.option("--backend", type=click.Choice(["auto", "onnx", "torch"]), default="auto",
                     show_default=True, help="Inference backend; auto picks by the model file's suffix."),
        click.option("--device", default="auto", show_default=True,
                     help="cpu, cuda, cuda:N or auto (a GPU when the backend has one, else the CPU)."),
        click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32",
                     show_default=True,
                     help="Inference precision. bf16/fp16 (autocast) need the torch backend; fp16 needs CUDA."),
        click.option("--bands", callback=parse_bands, metavar="I,J,K",
                     help="1-based scene bands in the model's band order, e.g. 3,2,1 for a "
                     "blue,green,red,nir scene and an RGB model. Default: by colour "
                     "interpretation, else the first bands."),
        click.option("--stride", type=click.IntRange(min=1), default=None,
                     help="Chip stride in model pixels. Default: the chip size (no overlap)."),
        click.option("--overlap", type=click.FloatRange(0, 1, max_open=True), default=None,
                     help="Overlap between neighbouring chips as a fraction, instead of --stride."),
        click.option("--edge", type=click.Choice(["shift", "pad", "skip"]), default="shift",
                     show_default=True,
                     help="Partial chips at the right and bottom edges: shift them inside the "
                     "scene, pad them with invalid pixels, or skip (and count) them."),
        click.option("--min-valid", type=click.FloatRange(0, 1), default=0.5, show_default=True,
                     help="Skip chips with a smaller share of valid pixels (GDAL mask: "
                     "nodata, alpha or mask band) without running the model."),
        click.option("--resample", is_flag=True,
                     help="Read chips at the model's ground resolution instead of the scene's."),
        click.option("--batch-size", type=click.IntRange(min=1), default=None,
                     help="Chips per model call. Default: the backend's (8 on the CPU, 64 on a GPU)."),
        click.option("--reader", type=click.Choice(["auto", "threads", "processes"]), default="auto",
                     show_default=True,
                     help="How chips are read: threads (one chip per read; enough for a CPU model), "
                     "processes (runs of chips per read, into shared memory; what a GPU needs), "
                     "or auto (processes when the model runs on a GPU)."),
        click.option("--readers", type=click.IntRange(min=1), default=None,
                     help="Reader threads or processes. Default: 2 threads, or one process per "
                     "core less one."),
        click.option("--to-crs", default=None, metavar="CRS",
                     help="Write the vectors in this CRS, e.g. EPSG:4326. Default: the scene's."),
        click.option("--raster", is_flag=True,
                     help="Also write <output>_prob.tif: a COG heat map with one band per label "
                     "and one pixel per chip position (NaN where a chip was skipped)."),
    ]
    for opt in reversed(opts):
        func = opt(func)
    return func


def build_options(bands, stride, overlap, edge, min_valid, resample, batch_size, readers, to_crs,
                  raster, chip_size: int, reader: str = "auto"):
    """RunOptions from CLI values (``chip_size`` comes from the model spec)."""
    from scenetag.jobs.options import RunOptions
    from scenetag.tiler.grid import stride_from_overlap

    if stride is not None and overlap is not None:
        raise click.UsageError("give --stride or --overlap, not both")
    if overlap is not None:
        stride = stride_from_overlap(chip_size, overlap)
    if to_crs:
        from rasterio.crs import CRS
        from rasterio.errors import CRSError

        try:
            CRS.from_user_input(to_crs)
        except CRSError:
            raise click.BadParameter(f"{to_crs!r} is not a CRS GDAL knows, e.g. EPSG:4326",
                                     param_hint="--to-crs") from None
    return RunOptions(bands=bands, stride=stride, edge=edge, min_valid=min_valid, resample=resample,
                      batch_size=batch_size, readers=readers, reader=reader, to_crs=to_crs, raster=raster)


def tqdm_progress(desc: str, enabled: bool, unit: str = "chip"):
    """A factory of progress callbacks drawing a tqdm bar on stderr: ``factory(total)`` → ``update(n)``."""
    def factory(total: int):
        from tqdm import tqdm

        bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=not enabled,
                   dynamic_ncols=True, leave=False)

        def update(n: int) -> None:
            bar.update(n)
            if bar.n >= bar.total:
                bar.close()
        return update
    return factory


@click.command("run")
@click.argument("scene", type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="GeoPackage to write. Default: SCENE's name with .gpkg, in the current folder.")
@job_options
@click.option("--overwrite", is_flag=True, help="Replace an existing output.")
@scheduler_option
@click.option("--progress/--no-progress", default=None,
              help="Progress bar on stderr. Default: on when stderr is a terminal.")
@handle_errors
def command(scene, output, model_path, spec_path, backend, device, precision, bands, stride, overlap, edge,
            min_valid, resample, batch_size, reader, readers, to_crs, raster, overwrite, scheduler, progress):
    """Classify SCENE (a GeoTIFF) chip by chip and write a GeoPackage.

    The scene is cut into chips of the model's size; chips with too little
    valid area are skipped; the rest go through the model in batches and are
    tagged at the model's thresholds.  The GeoPackage holds a `chips` layer
    (footprints, probabilities, tags), one `label_<name>` layer per label and
    a `runs` table with the provenance.
    """
    from scenetag.jobs.cluster import resolve_scheduler
    from scenetag.jobs.runner import run_scene

    out = Path(output) if output else Path.cwd() / (Path(scene).stem + ".gpkg")
    on_cluster = resolve_scheduler(scheduler) is not None
    # On a cluster the workers load the model on --device; here it is only read.
    predictor = load_model(model_path, spec_path, backend, "cpu" if on_cluster else device, precision)
    options = build_options(bands, stride, overlap, edge, min_valid, resample, batch_size, readers,
                            to_crs, raster, predictor.spec.chip_size, reader)
    if on_cluster:
        from scenetag.jobs.batch import run_scene_on_cluster

        quiet_third_party()  # again: importing distributed set its own levels
        result = run_scene_on_cluster(scene, out, predictor, options, overwrite=overwrite, device=device,
                                      scheduler=scheduler, announce=announce_cluster)
    else:
        show = sys.stderr.isatty() if progress is None else progress
        result = run_scene(scene, out, predictor, options, overwrite=overwrite,
                           progress=tqdm_progress(Path(scene).name, show))
    click.echo(
        f"{result.output}: {result.status}, {_n(result.n_chips_classified, 'chip')} classified, "
        f"{result.n_chips_skipped_nodata} skipped (nodata), {result.n_chips_skipped_edge} skipped (edge), "
        f"{result.seconds:.1f} s ({result.chips_per_second:.1f} chips/s)"
        + (f"; {result.reason}" if result.reason else "")
    )


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"
