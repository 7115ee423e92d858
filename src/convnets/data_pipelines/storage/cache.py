"""The node-local shard cache: whole shards copied from a store (a URL, or a slow shared folder) to local disk.

Layout of one split's cache folder (a "mirror": it looks like a local split folder, so the index and
label readers work on it unchanged):
  manifest.json, *.idx, labels.npy     the split's small files, fetched at start-up (fetch_small_files)
  shard-000000.tar ...                 shards, fetched whole, verified, then read with pread as usual
  .cache/<shard>.lock                  flock: one process of the node fetches a shard, the others wait
  .cache/<shard>.ok                    "sha256 inode size mtime_ns" of the verified file; its mtime is the
                                       shard's last use on this node (LRU across the node's processes)

A shard is written as "<name>.tmp" while its bytes stream in and are hashed, then fsynced and renamed
(utils/files.atomic_file): a file under the final name was whole and matched the manifest's sha256
and size when it was renamed. A file whose .ok record does not match its inode, size and mtime (a
file rewritten, truncated or left by an older run) is hashed again before use and refetched if it
differs; a leftover .tmp is never read and is overwritten by the next fetch.

Prefetch: `follow(shards)` hands the cache this process's reading order (the shard of each sample it
will read, from its current position); `advance(pos)` says how far it has read. A few threads fetch
the shards in order of next use, as far ahead as the byte limit allows: the lookahead is the longest
run of next-needed shards whose bytes fit the limit. Room is made by evicting the least recently used
shards outside the lookahead, never one inside it. Another process of the node may evict a shard this
one needs later: it is fetched again (correct, just more bytes).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from convnets.data_pipelines.storage.store import Store, StoreError
from convnets.utils.files import atomic_file, atomic_write_bytes, sha256_file

log = logging.getLogger(__name__)

META = ".cache"  # lock files and verification records, beside the shards
WAIT_FOR_FETCH_S = 600.0  # a worker waiting for the training process's prefetch (one shard: seconds)
TOUCH_EVERY_S = 10.0  # the LRU stamp is refreshed at most this often per shard and process (one utime)


class Entry(Protocol):
    """A shard as the manifest lists it (shards/format.py ShardEntry)."""

    name: str
    num_bytes: int
    sha256: str


@dataclass
class CacheStats:
    """What the cache did in this process (bench data and logs)."""

    bytes_fetched: int = 0
    shards_fetched: int = 0
    hits: int = 0  # ensure() found the shard verified on disk
    misses: int = 0  # ensure() had to wait for a fetch (its own or a prefetch thread's or a neighbour's)
    wait_s: float = 0.0  # seconds spent blocked in ensure()

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        """One line for the log: what was fetched, and how long the reader waited for it."""
        return (
            f"{self.bytes_fetched / 1e6:,.1f} MB fetched in {self.shards_fetched} shards, "
            f"{self.hits} hits, {self.misses} misses, reader waited {self.wait_s:.1f} s"
        )


def plain_name(name: str, where: str) -> str:
    """A manifest name is written into the cache folder: no paths ("../x" would write outside it)."""
    if Path(name).name != name or name in ("", ".", ".."):
        raise StoreError(f"{where}: file name {name!r} is not a plain file name (path traversal refused)")
    return name


# Lock descriptors held right now, by any thread of this process. A forked child (a DataLoader
# worker) inherits copies of them, and a flock lives until the last copy closes: the child closes its
# copies at once, else a lock held by a parent's thread at the fork would never be released.
_HELD: set[int] = set()
_FORK_HOOK: list[bool] = []


def _close_inherited_locks() -> None:
    for fd in list(_HELD):
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


@contextlib.contextmanager
def flocked(path: Path, *, blocking: bool = True) -> Iterator[bool]:
    """An exclusive flock on `path` (created); yields False at once if not blocking and someone holds it.

    flock locks an open file description, so two threads of one process conflict too, and the lock
    goes with the process: a killed fetcher never leaves a shard locked.
    """
    if not _FORK_HOOK:
        _FORK_HOOK.append(True)
        os.register_at_fork(after_in_child=_close_inherited_locks)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    _HELD.add(fd)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        _HELD.discard(fd)
        # Unlock explicitly: close() alone releases the lock only with the last copy of the descriptor,
        # and a worker forked between this open() and the bookkeeping above may hold one.
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def fetch_small_files(store: Store, names: dict[str, str | None], folder: Path, *, threads: int = 8) -> None:
    """Copy `names` (store name -> sha256, or None: no checksum known) into `folder` by base name, in parallel.

    An existing copy is kept when its sha256 matches, or, without a checksum, when it exists (written
    atomically, so it is whole); the caller removes copies it knows to be stale.
    """

    def one(item: tuple[str, str | None]) -> None:
        name, sha = item
        local = folder / Path(name).name
        if local.is_file() and (sha is None or sha256_file(local) == sha):
            return
        data = store.read(name)
        if sha is not None and hashlib.sha256(data).hexdigest() != sha:
            raise StoreError(f"{store.url(name)}: sha256 differs from the manifest's (changed after writing?)")
        atomic_write_bytes(local, data)

    with ThreadPoolExecutor(max(1, threads), thread_name_prefix="cache-small") as pool:
        list(pool.map(one, names.items()))  # list(): the first error raises here


@dataclass(frozen=True)
class CacheSpec:
    """What a worker process needs to open the same cache (picklable; no threads, no locks held)."""

    store: Store
    prefix: str
    entries: tuple
    folder: Path
    limit_bytes: int | None

    def open(self, *, fetch: bool = True) -> ShardCache:
        """A cache without prefetch threads: it fetches on demand and waits for the node's other fetchers."""
        return ShardCache(
            self.store, self.prefix, self.entries, self.folder, limit_bytes=self.limit_bytes, threads=0, fetch=fetch
        )


class ShardCache:
    """Shards of one split, fetched from `store` (names "<prefix>/<shard name>") into `folder`.

    limit_bytes: the node's byte budget for this folder (None: no limit); threads: prefetch threads.
    """

    def __init__(
        self,
        store: Store,
        prefix: str,
        entries: Sequence[Entry],
        folder: Path,
        *,
        limit_bytes: int | None = None,
        threads: int = 4,
        fetch: bool = True,
    ) -> None:
        self.store, self.prefix, self.folder = store, prefix, Path(folder)
        self.entries = list(entries)
        for e in self.entries:
            plain_name(e.name, store.url(f"{prefix}/manifest.json"))
        self.limit = limit_bytes
        # fetch=False: a forked worker of a process that reads a remote store (whose client does not
        # survive fork) waits for that process's prefetch to bring a shard in instead of fetching it.
        self.fetch = fetch
        self.stats = CacheStats()
        (self.folder / META).mkdir(parents=True, exist_ok=True)
        self._trusted: dict[int, tuple[int, int, int]] = {}  # shard -> (inode, size, mtime_ns) verified here
        self._touched: dict[int, float] = {}
        self.touch_every_s = TOUCH_EVERY_S
        self._cond = threading.Condition()
        self._uses: list[np.ndarray] | None = None  # per shard: sorted positions in the followed order
        self._pos = 0
        self._busy: set[int] = set()  # shards this process is fetching
        self._failed: set[int] = set()  # prefetches that failed: left to ensure(), which raises
        self._closed = False
        self._threads = [
            threading.Thread(target=self._prefetch_loop, name=f"cache-prefetch-{i}", daemon=True)
            for i in range(threads)
        ]
        for t in self._threads:
            t.start()

    # -- names ----------------------------------------------------------------------------------
    def path(self, shard: int) -> Path:
        return self.folder / self.entries[shard].name

    def url(self, shard: int) -> str:
        return self.store.url(f"{self.prefix}/{self.entries[shard].name}")

    def _meta(self, shard: int, suffix: str) -> Path:
        return self.folder / META / (self.entries[shard].name + suffix)

    def spec(self) -> CacheSpec:
        return CacheSpec(self.store, self.prefix, tuple(self.entries), self.folder, self.limit)

    def __reduce__(self):  # sent to a spawned worker process: the same cache there, without prefetch threads
        return (CacheSpec.open, (self.spec(),))

    # -- the reader's side ----------------------------------------------------------------------
    def ensure(self, shard: int) -> Path:
        """The shard's local path, once it is in the cache and verified (blocks while it is fetched)."""
        if self._is_good(shard):
            with self._cond:
                self.stats.hits += 1
            self._touch(shard)
            return self.path(shard)
        begin = time.perf_counter()
        with self._cond:
            self._failed.discard(shard)
        if self.fetch:
            self._fetch(shard, protect=self._lookahead())
        else:
            self._wait_for(shard)
        with self._cond:
            self.stats.misses += 1
            self.stats.wait_s += time.perf_counter() - begin
        return self.path(shard)

    def follow(self, shards: np.ndarray) -> None:
        """This process's reading order from now on: the shard of every sample it will read, in order."""
        shards = np.asarray(shards, dtype=np.int64)
        order = np.argsort(shards, kind="stable")
        bounds = np.searchsorted(shards[order], np.arange(len(self.entries) + 1))
        with self._cond:
            self._uses = [order[bounds[s] : bounds[s + 1]] for s in range(len(self.entries))]
            self._pos = 0
            self._failed.clear()
            self._cond.notify_all()

    def advance(self, position: int) -> None:
        """Samples of the followed order read so far: shards used only before it may be evicted."""
        with self._cond:
            if position > self._pos:
                self._pos = position
                self._cond.notify_all()

    def settle(self, timeout: float = 60.0) -> bool:
        """Wait until the prefetch threads have nothing left to do for now; False on timeout (bench, tests)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._threads and (self._busy or self._pick()[0] is not None):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(timeout=min(left, 0.2))
        return True

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for t in self._threads:
            t.join()
        self._threads = []  # ensure() still works: on demand, without prefetch

    # -- verification ---------------------------------------------------------------------------
    def _is_good(self, shard: int) -> bool:
        """Whether the file under the final name is verified (hashing it only if nobody recorded it)."""
        try:
            st = os.stat(self.path(shard))
        except FileNotFoundError:
            return False
        entry, key = self.entries[shard], (st.st_ino, st.st_size, st.st_mtime_ns)
        if self._trusted.get(shard) == key:
            return True
        if st.st_size != entry.num_bytes:
            return False
        try:
            record = self._meta(shard, ".ok").read_text().split()
        except OSError:
            record = []
        if record == [entry.sha256, *map(str, key)]:
            self._trusted[shard] = key
            return True
        return False

    def _record(self, shard: int) -> None:
        st = os.stat(self.path(shard))
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        atomic_write_bytes(self._meta(shard, ".ok"), " ".join([self.entries[shard].sha256, *map(str, key)]).encode())
        self._trusted[shard] = key

    def _touch(self, shard: int) -> None:
        now = time.monotonic()
        if shard not in self._touched or now - self._touched[shard] >= self.touch_every_s:
            self._touched[shard] = now
            stamp = time.time()  # not utime's default: the kernel's file clock ticks only every few ms
            with contextlib.suppress(OSError):  # evicted meanwhile: nothing to stamp
                os.utime(self._meta(shard, ".ok"), (stamp, stamp))

    def _wait_for(self, shard: int, timeout_s: float = WAIT_FOR_FETCH_S) -> None:
        """Block until another process of the node has fetched the shard (its lock shows a fetch in flight)."""
        deadline = time.monotonic() + timeout_s
        while not self._is_good(shard):
            if time.monotonic() > deadline:
                raise StoreError(
                    f"{self.url(shard)}: not fetched by the training process within {timeout_s:.0f} s "
                    "(a loader worker cannot fetch it itself)"
                )
            with flocked(self._meta(shard, ".lock")):  # returns at once unless a fetch is in flight
                pass
            time.sleep(0.05)

    # -- fetching -------------------------------------------------------------------------------
    def _fetch(self, shard: int, *, protect: set[int]) -> bool:
        """Bring the shard in, unless someone did; True if this call downloaded it."""
        with flocked(self._meta(shard, ".lock")):
            if self._is_good(shard):
                return False
            path, entry = self.path(shard), self.entries[shard]
            if path.exists() and path.stat().st_size == entry.num_bytes and sha256_file(path) == entry.sha256:
                self._record(shard)  # whole and right, only unrecorded (e.g. copied in by hand)
                return False
            if path.exists():
                log.warning("%s: cached copy is damaged (size or sha256 differs); fetching it again", path)
                path.unlink()
            self._make_room(entry.num_bytes, protect | {shard})
            self._download(shard)
            self._record(shard)
            self._touch(shard)
        return True

    def _download(self, shard: int) -> None:
        entry, digest, size = self.entries[shard], hashlib.sha256(), 0
        name = f"{self.prefix}/{entry.name}"
        with atomic_file(self.path(shard)) as out:  # any error below removes the .tmp; nothing is renamed
            for chunk in self.store.stream(name):
                digest.update(chunk)
                out.write(chunk)
                size += len(chunk)
            if size != entry.num_bytes or digest.hexdigest() != entry.sha256:
                got = digest.hexdigest()[:16]
                raise StoreError(
                    f"{self.store.url(name)}: shard {entry.name} has {size} bytes, sha256 {got}..., "
                    f"the manifest says {entry.num_bytes} bytes, {entry.sha256[:16]}... (changed after writing?)"
                )
        with self._cond:
            self.stats.bytes_fetched += size
            self.stats.shards_fetched += 1

    # -- the byte budget ------------------------------------------------------------------------
    def _cached(self) -> dict[int, tuple[int, float]]:
        """Shards under their final name now (this node, all processes): shard -> (bytes, last use)."""
        out = {}
        for shard, entry in enumerate(self.entries):
            try:
                size = os.stat(self.folder / entry.name).st_size
            except FileNotFoundError:
                continue
            try:
                used = os.stat(self._meta(shard, ".ok")).st_mtime
            except FileNotFoundError:
                used = 0.0  # unrecorded: evicted first
            out[shard] = (size, used)
        return out

    def _make_room(self, need: int, protect: set[int]) -> None:
        """Evict least recently used shards outside `protect` until `need` more bytes fit the limit."""
        if self.limit is None:
            return
        cached = self._cached()
        used = sum(size for size, _ in cached.values()) + self._busy_bytes()
        for shard in sorted((s for s in cached if s not in protect), key=lambda s: cached[s][1]):
            if used + need <= self.limit:
                return
            if self._evict(shard):
                used -= cached[shard][0]
        if used + need > self.limit:
            log.debug("cache over its limit by %d bytes: every cached shard is still needed", used + need - self.limit)

    def _busy_bytes(self) -> int:
        with self._cond:
            return sum(self.entries[s].num_bytes for s in self._busy)

    def _evict(self, shard: int) -> bool:
        # A process that has the file open keeps reading it after the unlink (the inode lives until
        # its last descriptor closes); one that opens it later finds it missing and fetches it again.
        with flocked(self._meta(shard, ".lock"), blocking=False) as mine:
            if not mine:  # being fetched or checked right now: not a victim
                return False
            with contextlib.suppress(FileNotFoundError):
                self.path(shard).unlink()
            with contextlib.suppress(FileNotFoundError):
                self._meta(shard, ".ok").unlink()
            self._trusted.pop(shard, None)
            return True

    # -- prefetch -------------------------------------------------------------------------------
    def _next_uses(self) -> list[tuple[int, int]]:
        """(next use, shard) from the current position, soonest first (caller holds the lock)."""
        if self._uses is None:
            return []
        out = []
        for shard, uses in enumerate(self._uses):
            i = np.searchsorted(uses, self._pos)
            if i < len(uses):
                out.append((int(uses[i]), shard))
        return sorted(out)

    def _lookahead(self) -> set[int]:
        """The next-needed shards whose bytes fit the limit together (all of them without a limit)."""
        with self._cond:
            return set(self._ahead(self._next_uses()))

    def _ahead(self, next_uses: list[tuple[int, int]]) -> list[int]:
        ahead, total = [], 0
        for _, shard in next_uses:
            total += self.entries[shard].num_bytes
            if self.limit is not None and total > self.limit and ahead:
                break
            ahead.append(shard)
        return ahead

    def _pick(self) -> tuple[int | None, set[int]]:
        """The soonest-needed shard of the lookahead that is neither here nor being fetched (caller holds the lock)."""
        ahead = self._ahead(self._next_uses())
        for shard in ahead:
            if shard not in self._busy and shard not in self._failed and self._missing(shard):
                return shard, set(ahead)
        return None, set(ahead)

    def _missing(self, shard: int) -> bool:
        return not os.path.exists(self.path(shard))

    def _prefetch_loop(self) -> None:
        while True:
            with self._cond:
                shard, ahead = (None, set()) if self._closed else self._pick()
                while shard is None and not self._closed:
                    self._cond.wait(timeout=1.0)  # woken by follow/advance; the timeout sees neighbours' evictions
                    shard, ahead = (None, set()) if self._closed else self._pick()
                if self._closed:
                    return
                self._busy.add(shard)
            try:
                self._fetch(shard, protect=ahead)
            except (StoreError, OSError) as exc:
                if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
                    log.warning("cache folder %s is full: prefetch paused (%s)", self.folder, exc)
                log.debug("prefetch of %s failed (ensure() will retry and report): %s", self.url(shard), exc)
                with self._cond:
                    self._failed.add(shard)
            finally:
                with self._cond:
                    self._busy.discard(shard)
                    self._cond.notify_all()
