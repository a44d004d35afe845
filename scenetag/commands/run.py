"""``scenetag run SCENE``: classify one scene into a GeoPackage."""

from __future__ import annotations

from pathlib import Path

import click

from scenetag.tiler.location import display_name

from scenetag.commands.options import (announce_cluster, dry_run_options, handle_errors, job_options, output_file_option,
                                       overwrite_option, print_plan, progress_option, scheduler_option,
                                       show_progress, tqdm_progress)


@click.command("run")
@click.argument("scene", type=click.Path(dir_okay=False))
@output_file_option("GeoPackage to write. Default: SCENE's name with .gpkg, in the current folder.")
@job_options
@overwrite_option
@scheduler_option
@progress_option
@dry_run_options
@handle_errors
def command(scene: str, output: Path | None, model_path: str | None, spec_path: str | None, backend: str,
            device: str, precision: str, overwrite: bool, scheduler: str | None, progress: bool | None,
            dry_run: bool, fmt: str, **job: object) -> None:
    """Classify SCENE (a GeoTIFF) chip by chip and write a GeoPackage.

    SCENE is a file, a URL (https://..., /vsicurl/...), object storage
    (s3://bucket/key, gs://, az://) or a STAC item (.json file or URL; the
    output is named by the item's id, the asset chosen as --asset says).

    The scene is cut into chips of the model's size; chips with too little
    valid area are skipped; the rest go through the model in batches and are
    tagged at the model's thresholds.  The GeoPackage holds a `chips` layer
    (footprints, probabilities, tags), one `label_<name>` layer per label and
    a `runs` table with the provenance.  With --scheduler (or
    $SCENETAG_SCHEDULER) the same job runs on a Dask cluster.  --dry-run
    prints the plan instead, classifying nothing and writing nothing.
    """
    from scenetag.api import plan_run, run_scene

    if dry_run:
        return print_plan([plan_run(scene, output, model=model_path, spec=spec_path, backend=backend, device=device,
                                    precision=precision,
                                    overwrite=overwrite, **job)], fmt, batch=False)
    result = run_scene(scene, output, model=model_path, spec=spec_path, backend=backend, device=device,
                       precision=precision, overwrite=overwrite, scheduler=scheduler,
                       progress=tqdm_progress(display_name(scene), show_progress(progress)),
                       announce=announce_cluster, **job)
    click.echo(
        f"{result.output}: {result.status}, {_n(result.n_chips_classified, 'chip')} classified, "
        f"{result.n_chips_skipped_nodata} skipped (nodata), {result.n_chips_skipped_edge} skipped (edge), "
        f"{result.seconds:.1f} s ({result.chips_per_second:.1f} chips/s)"
        + (f"; bands {result.bands_used}" if result.bands_used else "")
        + (f"; {result.reason}" if result.reason else "")
        + "".join(f"; warning: {w}" for w in result.warnings)
    )


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"
