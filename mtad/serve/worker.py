"""One inference worker behind a bounded queue.

The model runs on one thread only (a GPU or the CPU's cores are used by one
batch at a time; torch modules are not made for concurrent calls). Requests are
admitted once their body has been read (`mtad.serve.app`: a slow client holds no
place while it sends): at most ``queue + 1`` requests are decoding, waiting or
being computed at once; the next one is answered 503 with a Retry-After estimate
straight away. Images of requests that wait together are run as one
batch of up to ``max_batch``.
"""
from __future__ import annotations

import math
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np


@dataclass
class _Job:
    images: np.ndarray                      # N x 3 x S x S float32 in [0, 1]
    future: Future = field(default_factory=Future)
    queued_at: float = field(default_factory=time.perf_counter)


@dataclass
class Computed:
    """A job's output: maps N x 1 x S x S, scores N, and how long it took.

    ``wait_ms``: queued until its batch started; ``inference_ms``: the wall time
    of the model call(s) for its batch; ``batch_size``: images in that batch.
    """

    anomaly_map: np.ndarray
    pred_score: np.ndarray
    wait_ms: float
    inference_ms: float
    batch_size: int


class InferenceWorker:
    """Runs ``model.predict`` (the `mtad.deploy.Inferencer` interface) on one thread.

    Use: ``if worker.admit(): try: ... await asyncio.wrap_future(worker.submit(x))
    finally: worker.release()``.
    """

    def __init__(self, model, queue_size: int = 8, max_batch: int = 8, thread: bool = True):
        """``thread=False``: no thread is started; the caller runs `run_forever` on a
        thread of its own (`mtad serve` gives it the main thread: on CPU, torch's
        OpenMP threads run a model about 1.7x faster called from the main thread than
        from another one, measured in benchmarks/serve_load.py)."""
        self.model = model
        self.capacity = int(queue_size) + 1
        self.max_batch = int(max_batch)
        self.in_flight = 0
        self.served = 0
        self._lock = threading.Lock()
        self._jobs: queue.Queue = queue.Queue()
        self._seconds_per_image = 0.0       # running mean, for Retry-After
        self._thread = None
        if thread:
            self._thread = threading.Thread(target=self.run_forever, name="mtad-inference",
                                            daemon=True)
            self._thread.start()

    # -- admission -------------------------------------------------------------------
    def admit(self) -> bool:
        """Take a place for one request; False when all ``queue + 1`` are taken."""
        with self._lock:
            if self.in_flight >= self.capacity:
                return False
            self.in_flight += 1
            return True

    def release(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def retry_after(self) -> int:
        """Seconds until a place is likely free (at least 1)."""
        per_request = max(self._seconds_per_image, 0.05)
        return max(1, math.ceil(self.in_flight * per_request))

    # -- work ------------------------------------------------------------------------
    def submit(self, images: np.ndarray) -> Future:
        """Queue N x 3 x S x S images; the future resolves to a `Computed`."""
        job = _Job(np.ascontiguousarray(images, dtype=np.float32))
        self._jobs.put(job)
        return job.future

    def close(self, timeout: float = 10.0) -> None:
        """Stop `run_forever` after the work already queued."""
        self._jobs.put(None)
        if self._thread is not None:
            self._thread.join(timeout)

    def run_forever(self) -> None:
        """Compute queued jobs, batching what waits together, until `close`."""
        while True:
            job = self._jobs.get()
            if job is None:
                return
            jobs, count, stop = [job], len(job.images), False
            while count < self.max_batch:            # gather what waits, up to one batch
                try:
                    more = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                jobs.append(more)
                count += len(more.images)
            self._run(jobs)
            if stop:
                return

    def _run(self, jobs: list[_Job]) -> None:
        started = time.perf_counter()
        try:
            images = np.concatenate([j.images for j in jobs]) if len(jobs) > 1 else jobs[0].images
            maps, scores = [], []
            for i in range(0, len(images), self.max_batch):
                m, s = self.model.predict(images[i:i + self.max_batch])
                maps.append(np.asarray(m, dtype=np.float32))
                scores.append(np.asarray(s, dtype=np.float32).reshape(-1))
            maps, scores = np.concatenate(maps), np.concatenate(scores)
        except BaseException as exc:  # the server stays up; each waiting request gets the error
            for j in jobs:
                j.future.set_exception(exc)
            return
        done = time.perf_counter()
        n = len(images)
        self._seconds_per_image = (0.8 * self._seconds_per_image + 0.2 * (done - started) / n
                                   if self.served else (done - started) / n)
        self.served += n
        at = 0
        for j in jobs:
            k = len(j.images)
            j.future.set_result(Computed(maps[at:at + k], scores[at:at + k],
                                         wait_ms=1000 * (started - j.queued_at),
                                         inference_ms=1000 * (done - started), batch_size=n))
            at += k
