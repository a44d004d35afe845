"""The chips layer written while the scene is classified: batches in, grid-ordered parts out, on a thread.

The write at the end built the whole ``chips`` layer after the last batch
and wrote it while nothing else ran.  :class:`ChipStream` takes each batch's
:class:`~scenetag.outputs_schema.records.ChipTable` as it is collected
(:meth:`ChipStream.add`, from the classifying thread: it only queues it), and
a writer thread appends the chips to the temporary GeoPackage
(:class:`~scenetag.outputs_schema.geopackage.GeoPackageWriter`) in parts of
:data:`PART_ROWS`.  :meth:`ChipStream.finish` writes what is left, then the
label layers, styles, project and ``runs``, and gives the file its name: the
output is as atomic as before (a temporary name, renamed at the end; an
error or a kill leaves no output and replaces none).

**Order.**  The file must be the one the write at the end gives, fids in grid
order.  Batches from reader threads come in grid order; those from reader
processes nearly so (runs finish out of order, at most a few dozen runs
apart).  Chips are held back until :data:`REORDER_WINDOW` grid cells later
ones have arrived, then written sorted.  Skipped (nodata) cells never
arrive, so no rule can know a chip is the next one; instead :meth:`finish`
checks that the rows written are exactly the scene's, in order, and should
anything have come later than the window (or not through the stream at all),
writes the chips layer again from the scene's table, at the cost of the
write at the end.  The output is the same either way.

**Parts written elsewhere.**  On a cluster a scene's strips are classified
by tasks in other processes, and no thread can follow them.  There (on GPU
workers: the job decides, :mod:`jobs.runner`) the chips layer is appended by
a chain of part tasks instead
(:func:`append_part`, each taking consecutive strips of at least
:data:`PART_ROWS` grid cells, :func:`part_groups`), which run on whichever
worker holds their strips, beside the classification of the strips after
them; the scene's write task appends the last strips and finishes the file
(:meth:`ChipStream.continuing`).  What the chain has written travels as a
small :class:`WrittenParts`.  A part task that Dask runs again (its worker
died) looks at the file first, so no chip is written twice; where the file
is not what the chain says, the write task writes the layer again whole.

**Memory.**  The stream holds only the chips of the window and the part
being written, and the grid keys written (8 bytes a chip, for the check).
Geometries exist only for the part being written.  The scene's whole table
(probabilities, offsets: a few MB) is the classification's result, which the
label layers need anyway.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from scenetag.outputs_schema.records import ChipTable

if TYPE_CHECKING:
    from scenetag.outputs_schema.geopackage import GeoPackageWriter
    from scenetag.outputs_schema.run_record import RunRecord

log = logging.getLogger(__name__)

#: Chips per append.  Each append opens and closes the GeoPackage (about 40 ms here), so small parts
#: cost more in all; at 4096 a 36 864-chip scene is 9 appends (docs/performance.md, the streamed write).
PART_ROWS = 4096
#: Grid cells a chip waits for before it is written: reader processes finish runs (32 cells) out of
#: order, as many apart as there are slots (about 2 per reader, plus those of two batches).
REORDER_WINDOW = 4096

_END = object()


@dataclass(frozen=True)
class WrittenParts:
    """How far the part tasks of a scene have written its chips layer into the temporary ``tmp``.

    Made by the scene job with ``tmp`` alone (nothing written yet), then
    returned by each :func:`append_part`, which the next one takes.
    """

    #: The temporary GeoPackage (:func:`~scenetag.atomic.temporary_name`, named after the job's process).
    tmp: str
    #: Chips appended by each part, in order.
    counts: tuple[int, ...] = ()
    #: Strip tables the parts took (the scene's first ``n_tables``).
    n_tables: int = 0
    #: The chips' bounds in the output CRS (for the QGIS project's extent).
    bounds: tuple[float, float, float, float] | None = None
    #: False when the file was not what the chain expected: the write task writes the layer whole.
    ok: bool = True
    #: Seconds the part tasks spent writing.
    seconds: float = 0.0

    @property
    def n_chips(self) -> int:
        return sum(self.counts)


def part_groups(sizes: Sequence[int], part_rows: int | None = None) -> list[range]:
    """Consecutive strips (``sizes``: grid cells of each) grouped into parts of at least ``part_rows`` cells.

    The last group may be smaller.  Part tasks write all but the last; the
    write task writes the last with the rest of the file.
    """
    part_rows = PART_ROWS if part_rows is None else part_rows
    groups, start, cells = [], 0, 0
    for i, n in enumerate(sizes):
        cells += n
        if cells >= part_rows:
            groups.append(range(start, i + 1))
            start, cells = i + 1, 0
    if start < len(sizes):
        groups.append(range(start, len(sizes)))
    return groups


def append_part(writer: "GeoPackageWriter", parts: WrittenParts, tables: Sequence[ChipTable],
                n_labels: int) -> WrittenParts:
    """Append ``tables`` (the scene's next strips, in grid order) to the chips layer that ``parts`` wrote.

    ``writer`` writes into ``parts.tmp``.  Run twice (Dask runs a task again
    when its worker died, perhaps after the append), it finds its chips in
    the file and does not write them again.  A file that holds neither what
    ``parts`` says nor that plus these chips (later parts are in it: Dask
    ran this task again because its result was lost with a worker) is left
    alone and the result says so (``ok`` False): the write task then writes
    the layer whole.
    """
    if not parts.ok:
        return parts
    t0 = time.perf_counter()
    part = ChipTable.concat(tables, n_labels)
    before = parts.n_chips
    have = writer.written()
    if have is None and not parts.counts:
        writer.abort()  # nothing yet, or the start of an earlier try of this first part, cut short
        writer.append(part)
    elif have == before:
        writer.resume(before, parts.bounds)
        writer.append(part)
    elif have == before + len(part):
        log.info("%s: this part of the chips layer was written by an earlier try", writer.tmp)
        writer.resume(have, parts.bounds)
        writer.include(writer.frame(part))
    else:
        log.warning("%s holds %s chips where %d were written: the chips layer will be written again at the end",
                    writer.tmp, "no" if have is None else have, before)
        return WrittenParts(parts.tmp, parts.counts, parts.n_tables, parts.bounds, ok=False,
                            seconds=parts.seconds)
    return WrittenParts(parts.tmp, (*parts.counts, len(part)), parts.n_tables + len(tables), writer.bounds,
                        seconds=parts.seconds + time.perf_counter() - t0)


def grid_keys(table: ChipTable, n_cols: int) -> np.ndarray:
    """Each chip's position in grid order (row, then column)."""
    return table.row.astype(np.int64) * int(n_cols) + table.col


def _take(table: ChipTable, index: np.ndarray) -> ChipTable:
    return ChipTable(table.row[index], table.col[index], table.x_off[index], table.y_off[index],
                     table.width[index], table.height[index], table.valid_fraction[index], table.probs[index])


class ChipStream:
    """Streams one scene's chips into ``writer`` on a thread of its own, in grid order.

    ``writer`` is made by ``open_writer()`` on the writer thread's first part
    (a :class:`~scenetag.outputs_schema.geopackage.GeoPackageWriter`); ``n_cols``
    is the grid's width.  Call :meth:`add` with each batch, then
    :meth:`finish` once with the scene's table; :meth:`abort` (or leaving a
    ``with`` block with an error) stops the thread and removes the temporary
    file.  A failed write is raised by :meth:`finish` (later batches are
    dropped meanwhile).
    """

    def __init__(self, open_writer: Callable[[], "GeoPackageWriter"], n_cols: int, *,
                 part_rows: int | None = None, window: int | None = None) -> None:
        self._open_writer = open_writer
        self.writer: GeoPackageWriter | None = None
        self.n_cols = max(1, int(n_cols))
        self.part_rows = PART_ROWS if part_rows is None else part_rows
        self.window = REORDER_WINDOW if window is None else window
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._pending: list[ChipTable] = []  # arrived, not yet written (any order)
        self._n_pending = 0
        self._max_key = -1
        self._last_key = -1
        self._written: list[np.ndarray] = []  # grid keys of the parts written
        self._late = False  # a chip came after later ones were written: finish rewrites the layer
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        #: Seconds the writer thread spent writing parts (overlapped with the classification).
        self.seconds_streaming = 0.0

    # --- the classifying thread ---------------------------------------------

    def add(self, table: ChipTable) -> None:
        """Hand one batch to the writer thread (returns at once)."""
        if self._closed or self._error is not None or not len(table):
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="chip-writer", daemon=True)
            self._thread.start()
        self._queue.put(table)

    __call__ = add  # the classification's ``on_table`` callback

    def continuing(self, parts: WrittenParts, tables: Sequence[ChipTable]) -> None:
        """Go on from what part tasks wrote (:func:`append_part`); ``tables`` are the scene's strips, in order.

        The writer must write into ``parts.tmp``.  The strips that the parts
        took are in the file; the others are written by :meth:`finish`.  Where
        the file is not what ``parts`` says, it is removed and :meth:`finish`
        writes every chip.
        """
        self.seconds_streaming = parts.seconds
        written = tables[:parts.n_tables]
        writer = self._writer()
        n_chips = sum(len(t) for t in written)
        if not (parts.ok and n_chips == parts.n_chips and writer.written() == n_chips):
            log.info("%s is not the chips layer its parts wrote: writing the layer whole", writer.tmp)
            self._discard_writer()  # nothing written: finish() writes the scene's table
            return
        writer.resume(n_chips, parts.bounds)
        self._written = [grid_keys(t, self.n_cols) for t in written if len(t)]
        self._last_key = int(self._written[-1][-1]) if self._written else -1
        self._pending = [t for t in tables[parts.n_tables:] if len(t)]
        self._n_pending = sum(len(t) for t in self._pending)

    def finish(self, table: ChipTable, run: "RunRecord") -> "RunRecord":
        """Write the rest (``table`` is every chip of the scene, in grid order) and name the file; the record.

        Raises what the writer thread raised; on any error nothing is left.
        """
        try:
            self._join()
            if self._error is not None:
                raise self._error
            t0 = time.perf_counter()
            if not self._written:  # nothing streamed (a small scene): ``table`` is every chip, in grid order
                self._pending.clear()
                self._write_part(table, check=False)
            else:
                self._write_part(self._take_pending(everything=True))
                written = np.concatenate(self._written)
                if self._late or not np.array_equal(written, grid_keys(table, self.n_cols)):
                    log.info("chips reached the stream out of order (%d of %d written in order): writing the "
                             "chips layer again", len(written), len(table))
                    self._discard_writer()
                    self._write_part(table, check=False)
            writer = self._writer()
            return writer.finish(table, run, before=time.perf_counter() - t0)
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Stop the writer thread and remove the temporary file."""
        self._closed = True
        self._join()
        self._discard_writer()

    def __enter__(self) -> "ChipStream":
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is not None:
            self.abort()

    def _join(self) -> None:
        if self._thread is not None:
            self._queue.put(_END)
            self._thread.join()
            self._thread = None

    # --- the writer thread ---------------------------------------------------

    def _work(self) -> None:
        while True:
            table = self._queue.get()
            if table is _END:
                return
            if self._closed or self._error is not None:
                continue  # drain: the stream is over
            try:
                t0 = time.perf_counter()
                self._arrive(table)
                self.seconds_streaming += time.perf_counter() - t0
            except BaseException as exc:  # noqa: BLE001 - raised by finish(), on the caller's thread
                self._error = exc

    def _arrive(self, table: ChipTable) -> None:
        self._pending.append(table)
        self._n_pending += len(table)
        self._max_key = max(self._max_key, int(grid_keys(table, self.n_cols).max()))
        while self._n_pending >= self.part_rows + self.window:
            part = self._take_pending(everything=False)
            if not len(part):
                return
            self._write_part(part)

    def _take_pending(self, everything: bool) -> ChipTable:
        """The pending chips that are due (all of them with ``everything``), sorted; the rest stay pending."""
        if not self._pending:
            return ChipTable.empty(0)
        n_labels = self._pending[0].probs.shape[1]
        joined = ChipTable.concat(self._pending, n_labels)  # sorted into grid order
        keys = grid_keys(joined, self.n_cols)
        n_due = len(joined) if everything else min(
            self.part_rows, int(np.searchsorted(keys, self._max_key - self.window, side="left")))
        due = _take(joined, np.arange(n_due))
        rest = _take(joined, np.arange(n_due, len(joined)))
        self._pending = [rest] if len(rest) else []
        self._n_pending = len(rest)
        return due

    def _write_part(self, part: ChipTable, check: bool = True) -> None:
        if not len(part):
            return
        keys = grid_keys(part, self.n_cols)
        if check and keys[0] <= self._last_key:
            self._late = True  # finish() writes the layer again; until then nothing more is worth writing
        if self._late and check:
            return
        self._writer().append(part)
        self._written.append(keys)
        self._last_key = int(keys[-1])

    def _writer(self) -> "GeoPackageWriter":
        if self.writer is None:
            self.writer = self._open_writer()
        return self.writer

    def _discard_writer(self) -> None:
        if self.writer is not None:
            self.writer.abort()
            self.writer = None
        self._written.clear()
        self._last_key = -1
