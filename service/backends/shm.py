"""System shared memory for Triton calls: region sets registered once, reused, always freed.

A region set is three POSIX shared-memory objects (x, t, eps) registered with Triton. Each
network call in flight leases one set for its duration, so concurrent edits never share a
buffer; a set goes back to the pool after the call and is reused by later calls of any
model (registered once). A set is destroyed (unregistered and unlinked) when a call on it
fails, when the pool is invalidated (Triton went away, so its registrations did too), when
the pool closes, and when it has been idle too long: a set unused for `idle_seconds` is freed
by the pool's reaper thread, and of the idle sets at most `max_idle` are kept (the least
recently used go first), so a burst of large or concurrent calls does not pin its memory in
/dev/shm and in Triton for the life of the process. /dev/shm never keeps a region of a pool
after close().
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import threading
import time
from collections.abc import Iterator
from multiprocessing import shared_memory

import numpy as np
from tritonclient.grpc import InferenceServerClient
from tritonclient.utils import InferenceServerException

log = logging.getLogger(__name__)
_pool_ids = itertools.count()
# Seconds to wait for an unregister when Triton is known to have gone away (its registrations
# went with it); a live Triton gets the pool's full timeout, since a busy one can take a while.
GONE_UNREGISTER_TIMEOUT = 0.5


class RegionSet:
    """The x, t and eps regions of one call, created in /dev/shm and registered with Triton."""

    def __init__(self, client: InferenceServerClient, prefix: str, x_bytes: int, t_bytes: int, timeout: float):
        self.capacity = (x_bytes, t_bytes)
        self.names = {role: f"{prefix}{role}" for role in ("x", "t", "eps")}
        sizes = {"x": x_bytes, "t": t_bytes, "eps": x_bytes}
        self.memory: dict[str, shared_memory.SharedMemory] = {}
        self.registered: list[str] = []
        try:
            for role, name in self.names.items():
                self.memory[role] = shared_memory.SharedMemory(name, create=True, size=sizes[role])
                client.register_system_shared_memory(name, self.key(name), sizes[role], client_timeout=timeout)
                self.registered.append(name)
        except BaseException:
            self.destroy(client)
            raise

    @staticmethod
    def key(name: str) -> str:
        """The POSIX name Triton opens: the region's own name in this host's /dev/shm."""
        return "/" + name

    def fits(self, x_bytes: int, t_bytes: int) -> bool:
        return x_bytes <= self.capacity[0] and t_bytes <= self.capacity[1]

    def write(self, role: str, array: np.ndarray) -> None:
        np.ndarray(array.shape, array.dtype, buffer=self.memory[role].buf)[...] = array

    def read(self, role: str, shape: tuple[int, ...], dtype=np.float32) -> np.ndarray:
        return np.ndarray(shape, dtype, buffer=self.memory[role].buf).copy()  # no view may outlive close()

    def destroy(self, client: InferenceServerClient | None, timeout: float = GONE_UNREGISTER_TIMEOUT) -> None:
        """Unregisters (best effort) and unlinks every region; safe to call twice.

        After one unregister fails the rest are not tried: a Triton that does not answer one
        will not answer the next, and waiting on each would hold up the caller.
        """
        for name in self.registered:
            if client is None:
                break
            try:
                client.unregister_system_shared_memory(name, client_timeout=timeout)
            except InferenceServerException as exc:
                log.warning("could not unregister shared memory %s from Triton: %s", name, exc)
                break
        self.registered = []
        for memory in self.memory.values():
            memory.close()
            with contextlib.suppress(FileNotFoundError):
                memory.unlink()
        self.memory = {}


class ShmPool:
    """Region sets for the calls in flight; thread-safe (one worker thread per edit calls it)."""

    def __init__(self, client: InferenceServerClient, timeout: float = 5.0, idle_seconds: float = 60.0,
                 max_idle: int = 8):
        self.client = client
        self.timeout = timeout
        self.idle_seconds = idle_seconds  # free a set idle this long; 0 = never by age
        self.max_idle = max_idle  # idle sets kept at most
        self.prefix = f"sdedit_{os.getpid()}_{next(_pool_ids)}_"
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # the reaper waits on it
        self._idle: list[tuple[float, RegionSet]] = []  # (since when, set), least recently used first
        self._leased: set[RegionSet] = set()
        self._generation = 0
        self._closed = False
        self._reaper: threading.Thread | None = None
        if idle_seconds > 0:
            self._reaper = threading.Thread(target=self._reap, name=f"{self.prefix}reaper", daemon=True)
            self._reaper.start()

    @contextlib.contextmanager
    def lease(self, x_bytes: int, t_bytes: int, x_capacity: int = 0, t_capacity: int = 0) -> Iterator[RegionSet]:
        """A registered set with room for x_bytes and t_bytes, this call's alone until it returns;
        a new set is made with room for x_capacity and t_capacity (a full batch), if larger."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the shared-memory pool is closed")
            fitting = [entry for entry in self._idle if entry[1].fits(x_bytes, t_bytes)]
            chosen = min(fitting, key=lambda entry: entry[1].capacity) if fitting else None
            if chosen is not None:
                self._idle.remove(chosen)
            regions = chosen[1] if chosen is not None else None
            generation = self._generation
            name = f"{self.prefix}{next(self._ids)}_"
        if regions is None:
            regions = RegionSet(self.client, name, max(x_bytes, x_capacity), max(t_bytes, t_capacity), self.timeout)
        with self._lock:
            self._leased.add(regions)
        healthy = False
        try:
            yield regions
            healthy = True
        finally:
            surplus: list[RegionSet] = []
            with self._lock:
                self._leased.discard(regions)
                keep = healthy and not self._closed and generation == self._generation
                if keep:
                    self._idle.append((time.monotonic(), regions))
                    while len(self._idle) > self.max_idle:
                        surplus.append(self._idle.pop(0)[1])  # the least recently used
                    self._changed.notify()
            if not keep:
                surplus.append(regions)
            for stale in surplus:
                stale.destroy(self.client, self.timeout)

    def _reap(self) -> None:
        """The reaper thread: frees sets idle longer than idle_seconds, until the pool closes."""
        while True:
            with self._lock:
                while not self._closed:
                    now = time.monotonic()
                    if self._idle and now - self._idle[0][0] >= self.idle_seconds:
                        break
                    wake = self._idle[0][0] + self.idle_seconds - now if self._idle else None
                    self._changed.wait(wake)
                if self._closed:
                    return
                cutoff = time.monotonic() - self.idle_seconds
                expired = [regions for since, regions in self._idle if since <= cutoff]
                self._idle = [entry for entry in self._idle if entry[0] > cutoff]
            if expired:
                log.debug("freeing %d shared-memory region set(s) idle for %.0f s", len(expired), self.idle_seconds)
            for regions in expired:
                regions.destroy(self.client, self.timeout)

    def invalidate(self, timeout: float = GONE_UNREGISTER_TIMEOUT) -> None:
        """Triton went away or restarted: drop every idle set; leased ones go when released."""
        with self._lock:
            self._generation += 1
            stale, self._idle = self._idle, []
        for _, regions in stale:
            regions.destroy(self.client, timeout)

    def close(self) -> None:
        """Frees every idle set, unregistering it from a (presumably live) Triton; stops the reaper."""
        with self._lock:
            self._closed = True
            self._changed.notify_all()
        if self._reaper is not None and self._reaper is not threading.current_thread():
            self._reaper.join()  # it may be freeing an expired set: bounded by the unregister timeouts
        self.invalidate(self.timeout)

    def region_names(self) -> list[str]:
        """Names of the regions this pool holds now (idle and leased), for checks and logs."""
        with self._lock:
            sets = [*(regions for _, regions in self._idle), *self._leased]
        return sorted(name for s in sets for name in s.names.values() if s.memory)
