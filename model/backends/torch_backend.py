"""The torch backend: a scenetag, plain or Lightning checkpoint as an :class:`~scenetag.model.backends.base.AsyncPredictor`.

It owns its device, precision and batching:

* uint8 chips go to the device as uint8 and are normalised there, with the
  spec's scale and offset, so a batch crosses the bus at one byte per pixel;
* ``precision`` "bf16" or "fp16" runs the whole network under autocast, in
  channels-last layout on CUDA; "fp32" runs it as is;
* a batch that runs out of device memory is split in halves and retried, and
  later calls use the smaller batch, instead of failing the job;
* on CUDA, :meth:`TorchPredictor.submit` returns at once: chips are copied
  into one of a ring of pinned buffers, uploaded on a copy stream and
  classified on the compute stream behind that upload, so the caller prepares
  the next batch meanwhile (double buffering); GPU time is measured with CUDA
  events (``gpu_seconds``);
* memory the caller owns for a while (the reader processes' shared memory)
  can be page-locked with :meth:`TorchPredictor.register_host`, so chips in it
  are uploaded from where they were read, without a host copy
  (``submit(parts, direct=True)``);
* on CUDA, batch shapes that repeat replay a captured CUDA graph
  (``cuda_graphs``), so the feeding thread does not launch every kernel from Python;
* on the CPU, glibc's malloc thresholds are raised (:mod:`.glibc_malloc`), so
  each batch reuses the memory the last one freed instead of faulting it in again.

Why each of these was chosen, with the measurements, is in docs/performance.md ("Backends").
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from scenetag.errors import ModelError, ModelLoadError, OptionError, require
from scenetag.hashing import model_sha256
from scenetag.model.backends.base import Done, check_device, checked_probabilities, is_gpu_device
from scenetag.model.preprocess import scale_offset
from scenetag.model.spec import ModelSpec
from scenetag.model.tta import average, views

log = logging.getLogger(__name__)

#: Chips per forward pass by device type: on the CPU as fast as larger batches, at a
#: fraction of the memory; on CUDA, the size before any out-of-memory split.
BATCH_SIZE = {"cpu": 8, "cuda": 256}
PRECISIONS = ("fp32", "bf16", "fp16")
#: Batches that may be queued on the GPU at once (pinned buffers in the ring).
RING = 3
#: CUDA graphs per predictor (one per repeating batch shape; the first ones seen).
GRAPHS = 2
#: cudaHostRegisterPortable.
HOST_REGISTER_PORTABLE = 1


def resolve_device(device: str) -> str:
    """"auto" → "cuda" when available else "cpu"; anything else is checked."""
    import torch

    if check_device(device) == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if is_gpu_device(device) and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} asked for but CUDA is not available: pass --device cpu")
    return device


class TorchPredictor:
    """Probabilities from a torch checkpoint.

    Args:
        path: A checkpoint (ours, a plain state dict, or Lightning's).
        device: "cpu", "cuda", "cuda:N" or "auto".
        spec: Spec for a checkpoint that carries none, or to override the stored one.
        precision: "fp32", "bf16" (autocast; CPU or CUDA) or "fp16" (autocast; CUDA only).
        batch_size: Chips per forward pass; default :data:`BATCH_SIZE` for the device.
        channels_last: Channels-last layout; default on CUDA.
        cuda_graphs: On CUDA, replay repeating batch shapes from a captured CUDA graph instead of
            launching every kernel from Python (see :meth:`_graphed`); default on CUDA,
            ignored elsewhere.
        threads: On the CPU, torch's intra-op threads (a setting of the whole process); default torch's own.
        model_bytes: The checkpoint's bytes (a model shipped to a Dask worker); ``path`` then only names it.
    """

    def __init__(self, path: str | Path, device: str = "auto", spec: ModelSpec | None = None,
                 precision: str = "fp32", batch_size: int | None = None,
                 channels_last: bool | None = None, cuda_graphs: bool | None = None,
                 threads: int | None = None, model_bytes: bytes | None = None):
        torch = require("torch", "torch")
        from scenetag.model.training.checkpoint import load_checkpoint

        if precision not in PRECISIONS:
            raise OptionError(f"precision {precision!r} is unknown: use one of {', '.join(PRECISIONS)}")
        self.path = str(path)
        self.device = resolve_device(device)
        #: "cuda" or "cpu": what autocast and the CUDA-only paths key on.
        self._device_type = torch.device(self.device).type
        on_cuda = self._device_type == "cuda"
        if precision == "fp16" and not on_cuda:
            raise OptionError("--precision fp16 needs a CUDA device: use bf16 (or fp32) on the CPU")
        self.precision = precision
        self._dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        self.batch_size = int(batch_size or BATCH_SIZE[self._device_type])
        self.channels_last = on_cuda if channels_last is None else bool(channels_last)
        model, self.spec, _ = load_checkpoint(path, spec=spec, data=model_bytes)
        model = model.to(self.device).eval()
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if on_cuda:
            torch.backends.cudnn.benchmark = True  # batch shapes repeat: let cuDNN pick its kernels once
        else:
            from scenetag.model.backends.glibc_malloc import keep_freed_memory

            if threads:
                torch.set_num_threads(int(threads))
            # Freed activations stay in the heap for the next batch, instead of an munmap and
            # page faults each batch (glibc only; see the module).
            keep_freed_memory()
        self.model = model
        scale, offset = scale_offset(self.spec)
        self._scale = torch.from_numpy(scale).to(self.device)
        self._offset = torch.from_numpy(offset).to(self.device)
        self.sha256 = model_sha256(self.path, model_bytes)
        self._torch = torch
        #: Seconds the GPU spent classifying (CUDA events; 0 on the CPU).
        self.gpu_seconds = 0.0
        self._ring: list[dict] = []
        self._next = 0
        self.cuda_graphs = on_cuda and (cuda_graphs is None or bool(cuda_graphs))
        self._graphs: dict[tuple, tuple] = {}  # shape -> (graph, static in, static out)
        self._seen: set[tuple] = set()  # shapes run once, eagerly
        if on_cuda:
            self._copy_stream = torch.cuda.Stream(device=self.device)
        log.info("torch model %s on %s (%s, %s, %d labels)", self.path, self.device, self.spec.arch,
                 precision, self.spec.n_labels)

    @property
    def on_gpu(self) -> bool:
        """Whether the model runs on CUDA."""
        return self._device_type == "cuda"

    #: TTA is done here, on the device tensor (see :func:`scenetag.model.backends.tta.with_tta`).
    applies_tta = True

    def _forward(self, x_u8):
        """Probabilities of a uint8 batch already on the device (averaged over the views of ``spec.tta``)."""
        torch = self._torch
        tta = self.spec.tta
        x_u8 = views(x_u8, tta)
        if self.channels_last:  # convert while the pixels are one byte each
            x_u8 = x_u8.contiguous(memory_format=torch.channels_last)
        x = x_u8.float() * self._scale + self._offset
        # No autocast weight cache: it is freed when the block ends, which a captured graph would outlive.
        with torch.autocast(self._device_type, dtype=self._dtype or torch.float32,
                            enabled=self._dtype is not None, cache_enabled=False):
            logits = self.model(x)
        return average(torch.sigmoid(logits.float()), tta)

    def _infer(self, x_u8):
        """Probabilities of a batch on CUDA, in chunks of :attr:`batch_size` (smaller after an OOM split)."""
        infer = self._graphed if self.cuda_graphs else self._run
        bs = self.batch_size
        if len(x_u8) <= bs:
            return infer(x_u8)
        # A graph's output is overwritten by its next replay: keep each chunk's own copy.
        return self._torch.cat([infer(x_u8[i:i + bs]).clone() for i in range(0, len(x_u8), bs)])

    def _graphed(self, x_u8):
        """``_forward`` on CUDA, replayed from a CUDA graph for batch shapes that repeat.

        Launching every kernel from Python costs the thread that feeds the GPU
        time it doesn't have; a replay costs a few microseconds.

        A shape runs eagerly the first time and is captured the second (a
        scene's short last batch is seen once).  The first :data:`GRAPHS`
        shapes that repeat get graphs, each with its own activations, and are
        kept; other shapes run eagerly (a capture synchronises the device, so
        it is not done over and over).  The chips are copied into
        the graph's own input on the device, and its output must be read
        (copied out on the same stream) before the next replay.  If capture
        fails (out of memory, an operation that can't be captured), the batch
        runs eagerly and graphs are turned off.
        """
        torch = self._torch
        key = tuple(x_u8.shape)
        entry = self._graphs.get(key)
        if entry is None:
            if key not in self._seen or len(self._graphs) >= GRAPHS:
                if len(self._seen) > 64:  # many one-off shapes: forget them
                    self._seen.clear()
                self._seen.add(key)
                return self._run(x_u8)
            try:
                entry = self._capture(x_u8)
            except Exception as exc:  # noqa: BLE001 - eager launches still work
                log.warning("CUDA graph capture failed (%s): running eagerly", exc)
                self.cuda_graphs = False
                self._graphs.clear()
                torch.cuda.empty_cache()
                return self._run(x_u8)
            self._graphs[key] = entry
        graph, static_in, static_out = entry
        static_in.copy_(x_u8)
        graph.replay()
        return static_out

    def _capture(self, x_u8) -> tuple:
        """A CUDA graph of ``_forward`` for ``x_u8``'s shape: (graph, static input, static output)."""
        torch = self._torch
        static_in = x_u8.clone()
        side = torch.cuda.Stream(device=self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):  # warm-up: cuDNN picks its kernels outside the capture
            for _ in range(2):
                self._forward(static_in)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # On this predictor's GPU and stream: torch's default capture stream lives on GPU 0.
        with torch.cuda.device(self.device), torch.cuda.graph(graph, stream=side):
            static_out = self._forward(static_in)
        log.info("captured a CUDA graph for batches of %d", x_u8.shape[0])
        return graph, static_in, static_out

    def _run(self, x_u8):
        """``_forward``, splitting the batch in halves while the device runs out of memory."""
        torch = self._torch
        try:
            return self._forward(x_u8)
        except torch.OutOfMemoryError:
            n = x_u8.shape[0]
            if n == 1:
                raise ModelError(
                    f"one chip does not fit in {self.device}'s memory with {self.spec.arch} at "
                    f"{self.spec.chip_size} px: use a smaller model or --device cpu"
                ) from None
            if self._device_type == "cuda":
                torch.cuda.empty_cache()
            half = n // 2
            if half < self.batch_size:
                log.warning("out of memory on %s at batch %d: continuing with batch %d", self.device, n, half)
                self.batch_size = half
            return torch.cat([self._run(x_u8[:half]), self._run(x_u8[half:])])

    def _check(self, chips: np.ndarray) -> None:
        if chips.ndim != 4 or chips.shape[1] != self.spec.n_bands:
            raise ModelLoadError(
                f"model {self.path} takes (N, {self.spec.n_bands}, H, W) chips, got shape {chips.shape}"
            )

    def predict(self, chips: np.ndarray) -> np.ndarray:
        """uint8 ``(N, C, H, W)`` in spec band order → float32 ``(N, L)`` probabilities."""
        torch = self._torch
        chips = np.asarray(chips)
        self._check(chips)
        if len(chips) == 0:
            return np.zeros((0, self.spec.n_labels), np.float32)
        if self._device_type == "cuda":
            pending = [self.submit([chips[i:i + self.batch_size]])
                       for i in range(0, len(chips), self.batch_size)]
            return np.concatenate([p.result() for p in pending])  # a reused buffer is read out first
        host = torch.from_numpy(np.ascontiguousarray(chips, dtype=np.uint8))
        out = []
        with torch.inference_mode():
            for start in range(0, len(host), self.batch_size):
                out.append(self._run(host[start:start + self.batch_size]))
        return checked_probabilities(torch.cat(out).numpy(), self.spec, self.path)

    def register_host(self, array: np.ndarray) -> bool:
        """Page-lock ``array``'s memory so that chips in it upload without a host copy.

        Returns False (and changes nothing) off CUDA, or where the driver
        refuses; the caller then passes ``direct=False``.  The memory must stay
        mapped until :meth:`unregister_host`.
        """
        if self._device_type != "cuda" or not array.flags.c_contiguous or array.nbytes == 0:
            return False
        torch = self._torch
        try:
            with torch.cuda.device(self.device):
                # Portable: pinned for every CUDA context of the process, not only this device's.
                torch.cuda.check_error(torch.cuda.cudart().cudaHostRegister(
                    array.ctypes.data, array.nbytes, HOST_REGISTER_PORTABLE))
        except Exception as exc:  # noqa: BLE001 - a driver refusal only costs the copy path
            log.warning("could not page-lock %.0f MiB of reader memory (%s): chips are copied instead",
                        array.nbytes / 2**20, exc)
            return False
        return True

    def unregister_host(self, array: np.ndarray) -> None:
        """Undo :meth:`register_host`, once every upload from ``array`` has finished.

        A refusal is logged, not raised: this runs while a scene's errors
        unwind, and must not hide them.
        """
        torch = self._torch
        with torch.cuda.device(self.device):
            self._copy_stream.synchronize()
            code = torch.cuda.cudart().cudaHostUnregister(array.ctypes.data)
        if code != torch.cuda.cudart().cudaError.success:
            log.warning("could not release the page-locked reader memory (CUDA error %s)", code)

    def submit(self, parts: Sequence[np.ndarray], direct: bool = False) -> "Done | _CudaPending":
        """Start classifying the chips of ``parts``; ``result()`` of the return value waits.

        On CUDA this returns once the chips are in pinned memory (the caller may
        reuse ``parts`` at once); upload and compute are queued on the GPU.  On
        the CPU it classifies at once.

        With ``direct=True`` the parts must lie in memory given to
        :meth:`register_host`: they are uploaded from there, and the caller may
        reuse them only after ``uploaded()`` of the return value.
        """
        if self._device_type != "cuda":
            return Done(self.predict(np.concatenate(parts) if len(parts) != 1 else parts[0]))
        torch = self._torch
        n = sum(len(p) for p in parts)
        if n == 0:
            return Done(np.zeros((0, self.spec.n_labels), np.float32))
        for p in parts:
            self._check(np.asarray(p))
        slot = self._slot(n, parts[0].shape[1:], staging=not direct)
        if not direct:
            staging = slot["host_np"]
            off = 0
            for p in parts:
                # A plain memcpy on this thread: torch's copy_ fans out to its CPU thread pool,
                # which the reader processes keep busy (docs/performance.md, "Backends").
                np.copyto(staging[off:off + len(p)], p, casting="no")
                off += len(p)
            sources = [slot["host"][:n]]
        else:
            sources = [torch.from_numpy(p) for p in parts]
        with torch.inference_mode():
            with torch.cuda.stream(self._copy_stream):
                dev = torch.empty((n, *parts[0].shape[1:]), dtype=torch.uint8, device=self.device)
                off = 0
                for src in sources:  # from page-locked memory: asynchronous DMA
                    dev[off:off + len(src)].copy_(src, non_blocking=True)
                    off += len(src)
                slot["uploaded"].record(self._copy_stream)
            compute = torch.cuda.current_stream(self.device)
            compute.wait_event(slot["uploaded"])
            dev.record_stream(compute)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record(compute)
            probs = self._infer(dev)
            end.record(compute)
            out = slot["out"][:n]
            out.copy_(probs, non_blocking=True)
            done = torch.cuda.Event()
            done.record(compute)
        slot["pending"] = _CudaPending(self, out, done, start, end, slot["uploaded"])
        return slot["pending"]

    def _slot(self, n: int, chip_shape: tuple, staging: bool) -> dict:
        """The next buffers of the ring, free and large enough for ``n`` chips.

        Each slot has a pinned buffer for probabilities and, when ``staging``
        (chips not uploaded from the caller's page-locked memory), a pinned
        buffer for the chips.  A slot is reused only after the upload from it
        has finished and the probabilities of its last batch have been read out.
        """
        torch = self._torch
        i = self._next
        self._next = (i + 1) % RING
        if len(self._ring) < RING:
            self._ring.append({})
        slot = self._ring[i]
        if slot.get("pending") is not None:
            slot.pop("pending").result()
        if slot.get("cap", 0) < n or slot.get("shape") != tuple(chip_shape):
            slot.clear()
            slot.update(cap=max(n, self.batch_size), shape=tuple(chip_shape), uploaded=torch.cuda.Event(),
                        out=torch.empty((max(n, self.batch_size), self.spec.n_labels), dtype=torch.float32,
                                        pin_memory=True))
        else:
            slot["uploaded"].synchronize()
        if staging and "host" not in slot:
            slot["host"] = torch.empty((slot["cap"], *chip_shape), dtype=torch.uint8, pin_memory=True)
            slot["host_np"] = slot["host"].numpy()
        return slot


class _CudaPending:
    """Probabilities queued on the GPU; :meth:`result` waits and copies them out."""

    def __init__(self, owner: TorchPredictor, out, done, start, end, uploaded) -> None:
        self._owner, self._out, self._done, self._start, self._end = owner, out, done, start, end
        self._uploaded = uploaded
        self._probs: np.ndarray | None = None

    def uploaded(self) -> None:
        """Wait until the chips are on the GPU (their host memory may be reused after this)."""
        if self._probs is None:
            self._uploaded.synchronize()

    def result(self) -> np.ndarray:
        if self._probs is None:
            self._done.synchronize()
            self._owner.gpu_seconds += self._start.elapsed_time(self._end) / 1000.0
            self._probs = checked_probabilities(self._out.numpy().copy(), self._owner.spec, self._owner.path)
        return self._probs
