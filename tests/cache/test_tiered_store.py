"""TieredStore: exact LRU eviction order, demotion hot -> warm -> cold -> dropped, promotion on hits, restart
from the folder, corrupt and truncated files, and the fall back to memory when the disk cannot be written."""

import errno
import logging
import random

import pytest
from vlray.cache import tiered_store

from vlray.cache.cache_file import CorruptCacheFile, decode_entry, encode_entry
from vlray.cache.tiered_store import TieredStore

SIZE = 100


def value(key: str) -> bytes:
    """Incompressible bytes, different per key, so cold (zstd) sizes do not depend on the content."""
    return random.Random(key).randbytes(SIZE)


def warm_size(key: str) -> int:
    return len(encode_entry(key, value(key), compress=False))


def cold_size(key: str) -> int:
    return len(encode_entry(key, value(key), compress=True))


def layout(store: TieredStore) -> dict[str, list[str]]:
    return {tier: store.keys(tier) for tier in ("hot", "warm", "cold")}


@pytest.fixture
def store(tmp_path):
    """Two entries fit in each tier."""
    return TieredStore(tmp_path / "cache", hot_bytes=2 * SIZE, warm_bytes=2 * warm_size("k0"),
                       cold_bytes=2 * cold_size("k0"))


def put(store: TieredStore, *keys: str) -> None:
    for key in keys:
        store.put(key, value(key))


def test_eviction_order_and_demotion(store):
    put(store, "k0", "k1")
    assert layout(store) == {"hot": ["k0", "k1"], "warm": [], "cold": []}
    put(store, "k2")
    assert layout(store) == {"hot": ["k1", "k2"], "warm": ["k0"], "cold": []}
    put(store, "k3", "k4")
    assert layout(store) == {"hot": ["k3", "k4"], "warm": ["k1", "k2"], "cold": ["k0"]}
    put(store, "k5", "k6")
    # k0 fell out of cold (dropped), k1 and k2 moved down, k3 and k4 moved to warm.
    assert layout(store) == {"hot": ["k5", "k6"], "warm": ["k3", "k4"], "cold": ["k1", "k2"]}
    stats = store.stats()
    assert stats["evictions"] == {"hot": 5, "warm": 3, "cold": 1}
    assert stats["entries"] == {"hot": 2, "warm": 2, "cold": 2}
    assert stats["bytes"] == {"hot": 2 * SIZE, "warm": warm_size("k3") + warm_size("k4"),
                              "cold": cold_size("k1") + cold_size("k2")}
    assert store.get("k0") is None


def test_hits_promote_and_refresh(store):
    put(store, "k0", "k1", "k2", "k3", "k4")  # hot k3 k4, warm k1 k2, cold k0
    assert store.get("k3") == value("k3")  # a hot hit makes k3 most recent
    put(store, "k5")
    assert layout(store) == {"hot": ["k3", "k5"], "warm": ["k2", "k4"], "cold": ["k0", "k1"]}
    assert store.get("k0") == value("k0")  # from cold, back to hot; k3 goes down, k2 to cold, k1 dropped
    assert layout(store) == {"hot": ["k5", "k0"], "warm": ["k4", "k3"], "cold": ["k1", "k2"]}
    assert store.get("k4") == value("k4")  # from warm
    assert layout(store) == {"hot": ["k0", "k4"], "warm": ["k3", "k5"], "cold": ["k1", "k2"]}
    stats = store.stats()
    assert stats["hits"] == {"hot": 1, "warm": 1, "cold": 1} and stats["promotions"] == 2
    assert store.get("nope") is None
    assert stats["misses"] == 0 and store.stats()["misses"] == 1
    assert store.stats()["hit_rate"] == {"hot": 0.25, "warm": 0.25, "cold": 0.25}


def test_put_of_a_held_key_changes_nothing(store):
    put(store, "k0", "k1", "k2")
    put(store, "k0")  # in warm: stays there
    assert layout(store) == {"hot": ["k1", "k2"], "warm": ["k0"], "cold": []}
    put(store, "k1")  # in hot: becomes most recent
    assert store.keys("hot") == ["k2", "k1"]
    assert store.stats()["puts"] == 3


def test_entries_too_big_for_a_tier_skip_it(tmp_path):
    big = random.Random(0).randbytes(3 * SIZE)
    store = TieredStore(tmp_path, hot_bytes=2 * SIZE, warm_bytes=2 * SIZE, cold_bytes=10 * SIZE)
    put(store, "k0")
    store.put("big", big)
    assert layout(store) == {"hot": ["k0"], "warm": [], "cold": ["big"]}
    assert store.get("big") == big  # handed back though it cannot be promoted
    assert store.tier_of("big") == "cold"
    store.put("huge", random.Random(1).randbytes(20 * SIZE))
    assert store.tier_of("huge") is None  # bigger than every tier: not kept


def test_warm_and_cold_survive_a_restart(tmp_path, store):
    put(store, "k0", "k1", "k2", "k3", "k4")
    store.flush()  # hot goes down: k3 k4 to warm, k1 k2 to cold, k0 dropped
    assert layout(store) == {"hot": [], "warm": ["k3", "k4"], "cold": ["k1", "k2"]}
    (tmp_path / "cache" / "warm" / ".tmp-half-written").write_bytes(b"partial")
    again = TieredStore(tmp_path / "cache", hot_bytes=2 * SIZE, warm_bytes=2 * warm_size("k0"),
                        cold_bytes=2 * cold_size("k0"))
    assert layout(again) == {"hot": [], "warm": ["k3", "k4"], "cold": ["k1", "k2"]}
    assert not (tmp_path / "cache" / "warm" / ".tmp-half-written").exists()
    assert again.get("k1") == value("k1") and again.get("k4") == value("k4")
    assert again.stats()["hits"] == {"hot": 0, "warm": 1, "cold": 1}
    # A smaller budget on restart evicts the oldest entries at once.
    smaller = TieredStore(tmp_path / "cache", hot_bytes=SIZE, warm_bytes=warm_size("k0"), cold_bytes=0)
    assert layout(smaller) == {"hot": [], "warm": ["k3"], "cold": []}


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty"])
@pytest.mark.parametrize("tier", ["warm", "cold"])
def test_a_damaged_file_is_a_logged_miss_and_is_removed(store, tmp_path, caplog, tier, damage):
    put(store, "k0", "k1", "k2", "k3", "k4")  # k0 in cold, k1 in warm
    key = "k1" if tier == "warm" else "k0"
    path = tmp_path / "cache" / tier / f"{key}{'.bin' if tier == 'warm' else '.zst'}"
    blob = path.read_bytes()
    if damage == "flip":
        blob = blob[:-10] + bytes([blob[-10] ^ 1]) + blob[-9:]
    path.write_bytes({"flip": blob, "truncate": blob[: len(blob) // 2], "empty": b""}[damage])
    with caplog.at_level(logging.WARNING, logger="vlray.cache.tiered_store"):
        assert store.get(key) is None
    assert "corrupt" in caplog.text and not path.exists() and store.tier_of(key) is None
    assert store.stats()["corrupt_files"] == 1 and store.stats()["misses"] == 1
    put(store, key)  # recomputed and stored again
    assert store.get(key) == value(key)


def test_a_file_removed_by_someone_else_is_a_plain_miss(store, tmp_path):
    put(store, "k0", "k1", "k2")
    (tmp_path / "cache" / "warm" / "k0.bin").unlink()
    assert store.get("k0") is None
    assert store.stats()["corrupt_files"] == 0 and store.tier_of("k0") is None


def test_unwritable_folder_means_memory_only(tmp_path, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with caplog.at_level(logging.WARNING, logger="vlray.cache.tiered_store"):
        store = TieredStore(blocker / "cache", hot_bytes=2 * SIZE, warm_bytes=10**6, cold_bytes=10**6)
    assert "memory only" in caplog.text and not store.stats()["disk_enabled"]
    put(store, "k0", "k1", "k2")
    assert layout(store) == {"hot": ["k1", "k2"], "warm": [], "cold": []}
    assert store.get("k2") == value("k2") and store.get("k0") is None


def test_full_disk_degrades_to_memory(store, monkeypatch, caplog):
    put(store, "k0", "k1", "k2")  # k0 written to warm

    def disk_full(path, blob):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tiered_store, "write_atomic", disk_full)
    with caplog.at_level(logging.WARNING, logger="vlray.cache.tiered_store"):
        put(store, "k3")  # k1 cannot be written: dropped, disk tiers off
    assert "No space left" in caplog.text
    stats = store.stats()
    assert not stats["disk_enabled"] and stats["disk_errors"] == 1
    assert layout(store) == {"hot": ["k2", "k3"], "warm": ["k0"], "cold": []}
    assert store.get("k0") == value("k0")  # what is on disk stays readable
    assert store.get("k3") == value("k3")


def test_keys_cannot_name_paths(store):
    for bad in ("../escape", "a/b", "", ".hidden", "x" * 201):
        with pytest.raises(ValueError, match="cache key"):
            store.put(bad, b"x")


def test_entry_format_checks_the_key_and_length():
    blob = encode_entry("abc", b"payload", compress=True)
    assert decode_entry("abc", blob) == b"payload"
    with pytest.raises(CorruptCacheFile, match="another key"):
        decode_entry("abd", blob)
    with pytest.raises(CorruptCacheFile, match="truncated"):
        decode_entry("abc", blob + b"x")


def test_negative_budget_is_refused(tmp_path):
    with pytest.raises(ValueError, match="hot_bytes=-1"):
        TieredStore(tmp_path, hot_bytes=-1, warm_bytes=0, cold_bytes=0)
