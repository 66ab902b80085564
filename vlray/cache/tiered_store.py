"""A content-addressed store in three tiers: hot (memory), warm (files), cold (zstd files). Plain Python.

Each tier has a byte budget and evicts its least recently used entry when over it; an entry evicted from hot is
demoted to warm, from warm to cold, and from cold it is dropped. A hit in warm or cold promotes the entry back
to hot. The tiers are exclusive (an entry lives in one), so the budgets add up. Warm and cold are files under
`folder` (see cache_file.py: atomic writes, checksums), and the index is rebuilt from them on start, so they
outlive the process; what was hot when a process dies is lost and recomputed on demand (`flush()` saves it).

What "hot" holds is up to a `HotCodec`: bytes in this process (`BYTES`), or Ray object refs in the CacheActor.
A folder that cannot be written, or a disk that fills up, turns the disk tiers off with a warning: the store
goes on in memory only.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from vlray.cache.cache_file import CorruptCacheFile, check_key, encode_entry, read_entry, write_atomic
from vlray.config import EngineConfig

log = logging.getLogger(__name__)

H = TypeVar("H")
TIERS = ("hot", "warm", "cold")
_SUFFIX = {"warm": ".bin", "cold": ".zst"}


class HotCodec(Protocol[H]):
    """How the hot tier holds a value: `wrap` bytes into a handle and `unwrap` it back (to demote it)."""

    def wrap(self, data: bytes) -> H: ...

    def unwrap(self, handle: H) -> bytes: ...


class _BytesCodec:
    def wrap(self, data: bytes) -> bytes:
        return data

    def unwrap(self, handle: bytes) -> bytes:
        return handle


BYTES: HotCodec[bytes] = _BytesCodec()


class TieredStore(Generic[H]):
    """Key -> bytes with hot/warm/cold tiers; `get` returns the hot handle (promoting the entry), or None."""

    def __init__(self, folder: str | Path | None, hot_bytes: int, warm_bytes: int, cold_bytes: int,
                 hot_codec: HotCodec[H] = BYTES) -> None:  # type: ignore[assignment]
        for name, value in (("hot_bytes", hot_bytes), ("warm_bytes", warm_bytes), ("cold_bytes", cold_bytes)):
            if value < 0:
                raise ValueError(f"{name}={value} must be 0 or more.")
        self.budgets = {"hot": hot_bytes, "warm": warm_bytes, "cold": cold_bytes}
        self.codec = hot_codec
        self._hot: OrderedDict[str, tuple[H, int]] = OrderedDict()
        self._disk: dict[str, OrderedDict[str, int]] = {"warm": OrderedDict(), "cold": OrderedDict()}
        self._bytes = dict.fromkeys(TIERS, 0)
        self._lock = threading.RLock()
        self.hits = dict.fromkeys(TIERS, 0)
        self.evictions = dict.fromkeys(TIERS, 0)
        self.misses = self.puts = self.promotions = self.corrupt_files = self.disk_errors = 0
        self.folder = Path(folder).expanduser() if folder is not None else None
        self.disk_enabled = self.folder is not None and self._open_folder(self.folder)
        if self.disk_enabled:
            self._rebuild_index()

    # -- public API ------------------------------------------------------------------------------------------

    def get(self, key: str) -> H | None:
        """The hot handle for `key` (promoted from warm or cold if it was there), or None on a miss."""
        with self._lock:
            if key in self._hot:
                self._hot.move_to_end(key)
                self.hits["hot"] += 1
                return self._hot[key][0]
            for tier in ("warm", "cold"):
                if key in self._disk[tier]:
                    data = self._read(tier, key)
                    if data is None:
                        break
                    self.hits[tier] += 1
                    self.promotions += 1
                    return self._insert_hot(key, data)
            self.misses += 1
            return None

    def put(self, key: str, data: bytes) -> None:
        """Store `data` under `key` in hot (an entry already held anywhere is left as it is: same key, same bytes)."""
        check_key(key)
        with self._lock:
            if key in self._hot:
                self._hot.move_to_end(key)
                return
            if any(key in index for index in self._disk.values()):
                return
            self.puts += 1
            self._insert_hot(key, data)

    def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        """The bytes of every key found (misses are absent)."""
        found = {}
        for key in keys:
            handle = self.get(key)
            if handle is not None:
                found[key] = self.codec.unwrap(handle)
        return found

    def put_many(self, items: Mapping[str, bytes]) -> None:
        for key, data in items.items():
            self.put(key, data)

    def tier_of(self, key: str) -> str | None:
        """Which tier holds `key` (no promotion, no counting)."""
        if key in self._hot:
            return "hot"
        return next((tier for tier in ("warm", "cold") if key in self._disk[tier]), None)

    def keys(self, tier: str) -> list[str]:
        """A tier's keys, least recently used first."""
        return list(self._hot if tier == "hot" else self._disk[tier])

    def tier_bytes(self, tier: str) -> int:
        """Bytes a tier holds: payload bytes in hot, file bytes in warm and cold."""
        return self._bytes[tier]

    def flush(self) -> None:
        """Demote every hot entry to disk (before a planned shutdown), so a restart finds them."""
        with self._lock:
            while self._hot and self.disk_enabled:
                self._evict_hot()

    def stats(self) -> dict[str, Any]:
        """Hits per tier, misses, hit rates, bytes and entries per tier, evictions, corrupt files found."""
        with self._lock:
            lookups = self.misses + sum(self.hits.values())
            return {
                "lookups": lookups,
                "hits": dict(self.hits),
                "misses": self.misses,
                "hit_rate": {tier: round(self.hits[tier] / lookups, 4) if lookups else 0.0 for tier in TIERS},
                "bytes": {tier: self.tier_bytes(tier) for tier in TIERS},
                "entries": {"hot": len(self._hot), "warm": len(self._disk["warm"]), "cold": len(self._disk["cold"])},
                "budgets": dict(self.budgets),
                "evictions": dict(self.evictions),
                "puts": self.puts,
                "promotions": self.promotions,
                "corrupt_files": self.corrupt_files,
                "disk_errors": self.disk_errors,
                "disk_enabled": self.disk_enabled,
                "folder": str(self.folder) if self.folder else None,
            }

    # -- tiers -----------------------------------------------------------------------------------------------

    def _insert_hot(self, key: str, data: bytes) -> H:
        handle = self.codec.wrap(data)
        if len(data) > self.budgets["hot"]:
            # Too big for hot at all: it goes straight to disk, and the caller still gets its handle this once.
            self._insert_disk("warm", key, data)
            return handle
        self._hot[key] = (handle, len(data))
        self._bytes["hot"] += len(data)
        while self.tier_bytes("hot") > self.budgets["hot"]:
            self._evict_hot()
        return handle

    def _evict_hot(self) -> None:
        key, (handle, size) = self._hot.popitem(last=False)
        self._bytes["hot"] -= size
        self.evictions["hot"] += 1
        self._insert_disk("warm", key, self.codec.unwrap(handle))

    def _insert_disk(self, tier: str, key: str, data: bytes) -> None:
        """Write an entry into warm or cold (the next tier down if it is too big for this one, else dropped)."""
        if not self.disk_enabled:
            return
        blob = encode_entry(key, data, compress=tier == "cold")
        if len(blob) > self.budgets[tier]:
            if tier == "warm":
                self._insert_disk("cold", key, data)
            return
        try:
            write_atomic(self._path(tier, key), blob)
        except OSError as exc:
            self._disk_failed(exc)
            return
        self._disk[tier][key] = len(blob)
        self._bytes[tier] += len(blob)
        while self.tier_bytes(tier) > self.budgets[tier]:
            self._evict_disk(tier)

    def _evict_disk(self, tier: str) -> None:
        key = next(iter(self._disk[tier]))
        self.evictions[tier] += 1
        if tier == "cold":
            self._remove(tier, key)
        elif (data := self._read(tier, key)) is not None:
            self._insert_disk("cold", key, data)

    def _read(self, tier: str, key: str) -> bytes | None:
        """The entry's bytes, removing it from `tier` (the caller moves it); None if gone or corrupt."""
        path = self._path(tier, key)
        try:
            data = read_entry(path, key)
        except FileNotFoundError:
            data = None  # removed behind our back (another process sharing the folder): a plain miss
        except (CorruptCacheFile, OSError) as exc:
            self.corrupt_files += 1
            log.warning("cache file %s is corrupt (%s); removed, the value will be recomputed", path, exc)
            data = None
        self._remove(tier, key)
        return data

    def _remove(self, tier: str, key: str) -> None:
        self._bytes[tier] -= self._disk[tier].pop(key, 0)
        try:
            self._path(tier, key).unlink(missing_ok=True)
        except OSError as exc:
            log.warning("could not remove cache file %s: %s", self._path(tier, key), exc)

    # -- disk ------------------------------------------------------------------------------------------------

    def _path(self, tier: str, key: str) -> Path:
        assert self.folder is not None
        return self.folder / tier / f"{key}{_SUFFIX[tier]}"

    def _open_folder(self, folder: Path) -> bool:
        try:
            for tier in ("warm", "cold"):
                (folder / tier).mkdir(parents=True, exist_ok=True)
                probe = folder / tier / ".tmp-probe"
                probe.write_bytes(b"")
                probe.unlink()
        except OSError as exc:
            log.warning("cache folder %s is not writable (%s): caching in memory only", folder, exc)
            return False
        return True

    def _disk_failed(self, exc: OSError) -> None:
        self.disk_errors += 1
        self.disk_enabled = False
        log.warning("writing to the cache folder %s failed (%s): caching in memory only from now on; entries "
                    "already on disk stay readable", self.folder, exc)

    def _rebuild_index(self) -> None:
        """Index the files a previous process left, oldest first; half-written temporaries are deleted."""
        assert self.folder is not None
        for tier in ("warm", "cold"):
            entries = []
            for path in (self.folder / tier).iterdir():
                if path.name.startswith(".tmp-"):
                    path.unlink(missing_ok=True)
                    continue
                if path.suffix != _SUFFIX[tier]:
                    continue
                stat = path.stat()
                entries.append((stat.st_mtime_ns, path.stem, stat.st_size))
            for _, key, size in sorted(entries):
                self._disk[tier][key] = size
                self._bytes[tier] += size
        for tier in ("warm", "cold"):
            while self.tier_bytes(tier) > self.budgets[tier]:
                self._evict_disk(tier)


def open_store(config: EngineConfig, hot_codec: HotCodec[H] = BYTES) -> TieredStore[H]:  # type: ignore[assignment]
    """The store an EngineConfig describes: its budgets, its folder's `store/` (disk tiers off when not caching)."""
    folder = config.resolved_cache_dir() / "store" if config.cache else None
    return TieredStore(folder, config.cache_hot_bytes, config.cache_warm_bytes, config.cache_cold_bytes, hot_codec)
