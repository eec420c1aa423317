"""System shared memory for Triton calls: region sets registered once, reused, always freed.

A region set is three POSIX shared-memory objects (x, t, eps) registered with Triton. Each
network call in flight leases one set for its duration, so concurrent edits never share a
buffer; a set goes back to the pool after the call and is reused by later calls of any
model (registered once). A set is destroyed (unregistered and unlinked) when a call on it
fails, when the pool is invalidated (Triton went away, so its registrations did too) and when
the pool closes; /dev/shm never keeps a region of a pool after close().
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import threading
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

    def __init__(self, client: InferenceServerClient, timeout: float = 5.0):
        self.client = client
        self.timeout = timeout
        self.prefix = f"sdedit_{os.getpid()}_{next(_pool_ids)}_"
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._idle: list[RegionSet] = []
        self._leased: set[RegionSet] = set()
        self._generation = 0
        self._closed = False

    @contextlib.contextmanager
    def lease(self, x_bytes: int, t_bytes: int) -> Iterator[RegionSet]:
        """A registered set with room for x_bytes and t_bytes, this call's alone until it returns."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the shared-memory pool is closed")
            fitting = [s for s in self._idle if s.fits(x_bytes, t_bytes)]
            regions = min(fitting, key=lambda s: s.capacity) if fitting else None
            if regions is not None:
                self._idle.remove(regions)
            generation = self._generation
            name = f"{self.prefix}{next(self._ids)}_"
        if regions is None:
            regions = RegionSet(self.client, name, x_bytes, t_bytes, self.timeout)
        with self._lock:
            self._leased.add(regions)
        healthy = False
        try:
            yield regions
            healthy = True
        finally:
            with self._lock:
                self._leased.discard(regions)
                keep = healthy and not self._closed and generation == self._generation
                if keep:
                    self._idle.append(regions)
            if not keep:
                regions.destroy(self.client, self.timeout)

    def invalidate(self, timeout: float = GONE_UNREGISTER_TIMEOUT) -> None:
        """Triton went away or restarted: drop every idle set; leased ones go when released."""
        with self._lock:
            self._generation += 1
            stale, self._idle = self._idle, []
        for regions in stale:
            regions.destroy(self.client, timeout)

    def close(self) -> None:
        """Frees every idle set, unregistering it from a (presumably live) Triton."""
        with self._lock:
            self._closed = True
        self.invalidate(self.timeout)

    def region_names(self) -> list[str]:
        """Names of the regions this pool holds now (idle and leased), for checks and logs."""
        with self._lock:
            sets = [*self._idle, *self._leased]
        return sorted(name for s in sets for name in s.names.values() if s.memory)
