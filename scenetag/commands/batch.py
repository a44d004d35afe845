"""``scenetag batch INPUTS... --out-dir DIR``: many scenes on a Dask cluster, safe to re-run from cron."""

from __future__ import annotations

import logging
import sys
import threading
from pathlib import Path

import click

from scenetag.commands.options import (announce_cluster, dry_run_options, handle_errors, job_options, out_dir_option,
                                       print_plan, progress_option, quiet_third_party, scheduler_option,
                                       show_progress)
from scenetag.config import progress_interval_s
from scenetag.errors import ScenetagError
from scenetag.jobs.cluster import DEFAULT_CHIPS_PER_TASK, DEFAULT_DASHBOARD, GPU_CHIPS_PER_TASK

log = logging.getLogger("scenetag.batch")


def cluster_options(func):
    """The cluster to run on: its scheduler, LocalCluster size, GPU annotation and task size."""
    opts = [
        scheduler_option,
        click.option("--workers", type=click.IntRange(min=1), default=None,
                     help="LocalCluster worker processes. Default: one per CPU core."),
        click.option("--threads", type=click.IntRange(min=1), default=None,
                     help="Threads per LocalCluster worker. Default: 1."),
        click.option("--gpu/--no-gpu", default=None,
                     help="Send inference tasks only to workers with a GPU resource "
                     "(dask worker --resources GPU=1). Default: when any worker declares one."),
        click.option("--chips-per-task", type=click.IntRange(min=1), default=None,
                     help="Scenes with more chips are split into strips of chip rows, one task each. "
                     f"Default: {DEFAULT_CHIPS_PER_TASK} on CPU workers, {GPU_CHIPS_PER_TASK} where inference "
                     "goes to GPU workers (docs/scale.md)."),
        click.option("--dashboard-address", default=DEFAULT_DASHBOARD, show_default=True, metavar="[HOST]:PORT",
                     help="Where the LocalCluster's dashboard listens (another port if taken)."),
        click.option("--dashboard-hold", type=click.FloatRange(min=0), default=0, metavar="SECONDS",
                     help="Keep the LocalCluster and its dashboard up this long after the batch, to look "
                     "at its task stream (Ctrl-C ends the hold). Default: 0, close at once."),
    ]
    for opt in reversed(opts):
        func = opt(func)
    return func


def add_log_file(path: str) -> logging.Handler:
    """Also log to ``path``, at INFO or below, with times (stderr keeps its level); returns the handler."""
    root = logging.getLogger()
    for h in root.handlers:
        if h.level == logging.NOTSET:
            h.setLevel(root.level)
    try:
        handler = logging.FileHandler(path)
    except OSError as exc:
        raise click.BadParameter(f"cannot write the log file {path!r}: {exc.strerror}", param_hint="--log-file") from None
    handler.setLevel(min(root.level, logging.INFO))
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    from scenetag.tiler.location import redact_logs

    redact_logs(handler)  # a signed URL's query never reaches the log file
    root.addHandler(handler)
    root.setLevel(min(root.level, logging.INFO))
    return handler


class BatchDisplay:
    """What the user sees of a batch as it runs, on stderr: chips done / planned, chips/s, a line per scene.

    On a terminal (or with --progress) a bar of chips, its postfix the scenes
    done, and each finished scene's line above it; otherwise (or with
    --no-progress) the same as log lines: a scene's line as it finishes, and
    the totals every ``interval`` seconds, so a cron log shows the work moving.
    """

    def __init__(self, bar: bool, interval: float) -> None:
        from scenetag.jobs.progress import BatchProgress

        self._want_bar, self._interval = bar, interval
        self._bar = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self.counts = BatchProgress(self._changed)

    def on_start(self, n_scenes: int) -> None:
        if self._want_bar:
            from tqdm import tqdm

            self._bar = tqdm(total=None, desc="chips", unit="chip", file=sys.stderr, dynamic_ncols=True,
                             leave=False)
        elif n_scenes:
            self._ticker = threading.Thread(target=self._tick, name="scenetag-progress", daemon=True)
            self._ticker.start()
        self.counts.start(n_scenes)

    def scene(self, total: int):
        """The runner's progress factory: a planned scene's chips."""
        return self.counts.scene(total)

    def on_done(self, record) -> None:
        self.counts.done(planned=record.strips > 0)
        last = self.counts.scenes_done >= self.counts.scenes_total
        if last:
            self._stop.set()  # the rest is the cluster's shutdown: no more periodic lines
        line = scene_line(record)
        if self._bar is not None:
            with self._lock:
                self._bar.write(line, file=sys.stderr)
        else:
            log.info("%s", line)
            if last:
                log.info("progress: %s", self.counts.snapshot().line())

    def close(self) -> None:
        """Stop the lines and the bar (again: nothing)."""
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
        if self._bar is not None:
            with self._lock:
                self._bar.close()
                self._bar = None

    def _changed(self, snap, n: int) -> None:
        if self._bar is None:
            return
        with self._lock:  # chip events come on the Dask client's thread, scene lines on this one
            if snap.chips_planned != self._bar.total:
                self._bar.total = snap.chips_planned
            postfix = f"{snap.scenes_done}/{snap.scenes_total} scenes"
            if snap.scenes_planned < snap.scenes_total:
                postfix += f", {snap.scenes_planned} planned"
            self._bar.set_postfix_str(postfix, refresh=False)
            self._bar.update(n) if n else self._bar.refresh()

    def _tick(self) -> None:
        while not self._stop.wait(self._interval):
            log.info("progress: %s", self.counts.snapshot().line())


def announce_hold(link: str, seconds: float) -> None:
    """Say, on stderr, that the batch is done and where its dashboard stays up."""
    click.echo(f"Batch done; Dask dashboard kept up for {seconds:g} s at {link} (Ctrl-C ends the hold)", err=True)


def scene_line(record) -> str:
    """One finished scene for people: status, name, chips, seconds, chips/s, and why when not ok."""
    rate = f" ({record.chips / record.seconds:.1f} chips/s)" if record.chips and record.seconds else ""
    note = record.error or record.reason
    return (f"{record.status} {Path(record.scene).name}: {record.chips:,} chips in {record.seconds:.1f} s{rate}"
            + (f"; {note}" if note else ""))


@click.command("batch")
@click.argument("inputs", nargs=-1, required=True)
@out_dir_option("Folder for the GeoPackages (one per scene, named after it), the report and the lock.",
                required=True)
@job_options
@cluster_options
@click.option("--force", is_flag=True, help="Redo scenes whose output is up to date.")
@click.option("--retries", type=click.IntRange(min=0), default=1, show_default=True,
              help="Tries again of a scene whose failure may go away (transient I/O) before recording it; "
              "a corrupt scene or a missing geotransform is recorded at once.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), default=None,
              help="Write the JSON run report here. Default: OUT_DIR/batch-report.json.")
@click.option("--log-file", type=click.Path(dir_okay=False), default=None,
              help="Also write the log here (INFO and up, with times), e.g. for cron.")
@progress_option
@dry_run_options
@handle_errors
def command(inputs, out_dir, model_path, spec_path, backend, device, precision, scheduler, workers, threads, gpu,
            chips_per_task, dashboard_address, dashboard_hold, force, retries, report_path, log_file, progress,
            dry_run, fmt, **job):
    """Classify many scenes into OUT_DIR, one GeoPackage each, on a Dask cluster.

    INPUTS are scene files, folders (their .tif/.tiff/.vrt/.jp2/.img files),
    quoted globs ('drop/**/*.tif') or list files (.txt/.lst: one input per
    line); URLs (https://..., /vsicurl/...), object storage (s3://bucket/key,
    a prefix s3://bucket/drop/ or a quoted glob 's3://bucket/**/*.tif'), and
    STAC Items or ItemCollections (.json files or URLs; each item a scene
    named by its id).  A scene whose GeoPackage is already there, made from the same
    scene, model and options, is skipped; --force redoes it.  A scene that
    fails is recorded and the others go on (a transient I/O failure is tried
    again first, --retries); a full disk, a model or cluster error stops the batch.

    Prints a summary on stdout and writes a JSON report.  Exit codes: 0 all
    scenes done or skipped, 1 some failed (or another error), 3 another
    batch holds OUT_DIR.  --dry-run prints the plan of every scene instead,
    with no cluster, no lock and nothing written.
    """
    from scenetag.api import plan_batch, run_batch
    from scenetag.jobs.batch import REPORT_NAME

    if dry_run:
        return print_plan(plan_batch(inputs, out_dir, model=model_path, spec=spec_path, backend=backend, force=force,
                                     device=device, precision=precision,
                                     **job), fmt, batch=True)
    quiet_third_party()  # again: importing distributed set its own levels
    handler = add_log_file(log_file) if log_file else None
    display = BatchDisplay(show_progress(progress), progress_interval_s())
    shown = []

    def show(report) -> None:
        display.close()
        click.echo(report.summary())
        click.echo(f"report: {report_path or Path(out_dir) / REPORT_NAME}")
        shown.append(report)

    def on_hold(report, link: str, seconds: float) -> None:  # the batch is done: its summary first
        show(report)
        announce_hold(link, seconds)

    try:
        report = run_batch(inputs, out_dir, model=model_path, spec=spec_path, backend=backend, device=device,
                           precision=precision, scheduler=scheduler, force=force, retries=retries,
                           workers=workers, threads=threads, gpu=gpu, chips_per_task=chips_per_task,
                           report_path=report_path, dashboard_address=dashboard_address,
                           forward_logs=bool(log_file), announce=announce_cluster, on_start=display.on_start,
                           on_done=display.on_done, progress=display.scene, dashboard_hold=dashboard_hold,
                           on_hold=on_hold, **job)
    finally:
        display.close()
        if handler is not None:
            logging.getLogger().removeHandler(handler)
            handler.close()
    if not shown:
        show(report)
    if not report.succeeded:
        n, total = len(report.failed), len(report.scenes)
        raise ScenetagError(f"{n} of {total} scene{'s' if total != 1 else ''} failed: see the report for why")
