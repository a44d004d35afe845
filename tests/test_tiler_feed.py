"""Reader processes: runs of one row, every cell read once into shared memory, slots lent and given back."""

from __future__ import annotations

import time

import numpy as np
import pytest
from affine import Affine

from scenetag.errors import OptionError
from scenetag.jobs.options import RunOptions
from scenetag.tiler.feed import ProcessFeed, ReaderMode, Run, runs_of
from scenetag.tiler.grid import GridCell
from scenetag.tiler.reader import RunRead
from tests.tiler_rasters import holey_scene, reader_for, spec


def test_runs_of_keeps_to_one_row_and_the_run_length():
    cells = [GridCell(r, c, c * 10, r * 10, 10, 10) for r in range(3) for c in range(5)]
    runs = runs_of(cells, per_run=2)
    assert [len(r) for r in runs] == [2, 2, 1] * 3
    assert all(len({c.row for c in r}) == 1 for r in runs)
    assert [c for r in runs for c in r] == cells


@pytest.mark.parametrize("resample", [False, True])
def test_process_feed_reads_every_cell_once(make_raster, resample):
    """Runs of cells read by processes give :meth:`read`'s chips, also where chips are resampled."""
    five_metres = Affine(5.0, 0, 500000.0, 0, -5.0, 4000000.0)  # the spec's resolution is 10 m
    path = holey_scene(make_raster, transform=five_metres if resample else None)
    reader, grid = reader_for(path, spec(), stride=48, resample=resample)
    assert (reader.factor != 1.0) is resample
    cells = list(grid)
    seen, kept = [], 0
    with reader, ProcessFeed(reader, cells, workers=2, per_run=4, slots=3) as feed:
        for run in feed:
            assert isinstance(run, RunRead)
            assert run.cells == tuple(cells[run.first:run.first + len(run.cells)])
            seen.extend((c.row, c.col) for c in run.cells)
            for i, cell in enumerate(run.cells):
                one = reader.read(cell)
                assert one.valid[0] == run.valid[i]
                if i in run.kept.tolist():
                    np.testing.assert_array_equal(run.pixels[run.kept.tolist().index(i)], one.pixels[0])
            kept += len(run.kept)
            run.release()
    assert sorted(seen) == sorted((c.row, c.col) for c in cells)
    assert 0 < kept < len(cells)


def test_process_feed_says_when_the_consumer_keeps_every_slot(make_raster):
    reader, grid = reader_for(holey_scene(make_raster, nodata=None), spec())
    with ProcessFeed(reader, list(grid), workers=1, per_run=1, slots=2) as feed:
        with pytest.raises(RuntimeError, match="release runs"):
            for _ in feed:
                pass  # never released


def test_a_run_gives_its_slot_back_once(make_raster):
    """Releasing a run twice frees one slot, not the slot another run has taken since."""
    reader, grid = reader_for(holey_scene(make_raster, nodata=None), spec())
    cells = list(grid)
    with ProcessFeed(reader, cells, workers=1, per_run=1, slots=2) as feed:
        runs: list[Run] = []
        for run in feed:
            time.sleep(0.02)  # the reader has time to fill any slot it was wrongly given
            np.testing.assert_array_equal(run.pixels, reader.read(run.cells[0]).pixels)
            runs.append(run)
            run.release()
            run.release()  # a second release must not free the slot twice
        assert len(runs) == len(cells)
        assert runs[-1].first == len(cells) - 1 and runs[-1].seconds > 0


def test_reader_mode_is_an_enum_that_options_keep_as_its_string():
    assert [m.value for m in ReaderMode] == ["auto", "threads", "processes"]
    opts = RunOptions(reader="processes")
    assert opts.reader is ReaderMode.PROCESSES
    assert RunOptions().reader is ReaderMode.AUTO
    d = opts.to_dict()
    assert d["reader"] == "processes" and type(d["reader"]) is str
    with pytest.raises(OptionError, match="reader 'gpu' is unknown: use one of auto, threads, processes"):
        RunOptions(reader="gpu")
