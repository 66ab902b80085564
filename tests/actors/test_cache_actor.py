"""The CacheActor on Ray: two ModelWorkers share it (the second encodes nothing the first encoded), its warm
tier survives a restart of the actor, and a worker's client treats an actor that is gone as a miss."""

import time
import uuid

import pytest

from actors.cache_actor import find_cache_actor, get_or_create_cache_actor
from actors.cache_client import CacheActorClient
from vlray.llm import LLM


def cache_config(tiny_config, tmp_path, **changes):
    """A config with its own actor name and folder, so tests do not share a cache."""
    return tiny_config.with_updates(cache_dir=str(tmp_path), cache_actor_name=f"cache-{uuid.uuid4().hex[:8]}",
                                    **changes)


def wait_until_dead(ray_module, actor, timeout_s: float = 30.0) -> None:
    """ray.kill returns at once: until the process is gone a call can still reach it (and move entries)."""
    deadline = time.monotonic() + timeout_s
    while ray_module._private.state.actors(actor._actor_id.hex())["State"] != "DEAD":
        assert time.monotonic() < deadline, "the killed actor did not die"
        time.sleep(0.1)


def test_two_workers_share_one_cache_actor(ray_local, tiny_config, tiny_loaded, sample_images, tmp_path):
    from actors.model_worker import ModelWorker

    config = cache_config(tiny_config, tmp_path)
    actor = get_or_create_cache_actor(config)
    images = [str(p) for p in sample_images[:3]]
    first = [{"id": f"a{q}-{i}", "prompt": q, "images": [im], "max_tokens": 4}
             for q in ("What is this?", "Count.") for i, im in enumerate(images)]
    second = [{"id": f"b{q}-{i}", "prompt": q, "images": [im], "max_tokens": 4}
              for q in ("Describe it.", "Read the text.") for i, im in enumerate(images)]
    workers = [ModelWorker.options(num_cpus=1).remote(config) for _ in range(2)]
    try:
        results_a = ray_local.get(workers[0].generate.remote(first))
        results_b = ray_local.get(workers[1].generate.remote(second))
        stats_a, stats_b = ray_local.get([w.stats.remote() for w in workers])
        info = ray_local.get(workers[1].info.remote())
    finally:
        for worker in workers:
            ray_local.kill(worker)
    expected = LLM(tiny_config.with_updates(backend="hf", cache=False), loaded=tiny_loaded).generate(first + second)
    assert [r.token_ids for r in results_a + results_b] == [r.token_ids for r in expected]
    assert info["cache"] == f"actor {config.cache_actor_name}"
    assert stats_a.num_images_encoded == 3 and stats_b.num_images_encoded == 0
    assert stats_b.num_images == 6 and stats_b.num_preprocessed_cache_hits == 6
    cache = ray_local.get(actor.stats.remote())
    assert cache["entries"]["hot"] == 6  # 3 preprocessed images + 3 encoder outputs
    assert cache["hits"]["hot"] >= 9 and cache["puts"] == 6
    ray_local.kill(actor)


def test_warm_tier_survives_a_restart_of_the_actor(ray_local, tiny_config, tmp_path):
    value = bytes(range(256)) * 4  # 1 KiB
    config = cache_config(tiny_config, tmp_path, cache_hot_bytes=len(value))  # one entry fits in hot
    actor = get_or_create_cache_actor(config)
    client = CacheActorClient(actor, config.cache_actor_name, retry_s=3600.0)
    client.put_many({"k0": value, "k1": value[::-1]})  # k0 demoted to warm, k1 hot
    assert ray_local.get(actor.stats.remote())["entries"] == {"hot": 1, "warm": 1, "cold": 0}

    ray_local.kill(actor)  # no flush: what was hot is lost
    wait_until_dead(ray_local, actor)
    get_or_create_cache_actor(config)  # a new actor on the same folder
    # The client's handle is of the dead actor: the call fails, and is made again on the new one.
    assert client.get_many(["k0", "k1"]) == {"k0": value}  # warm survived, hot was lost with the process
    assert client.num_failures == 1
    stats = client.stats()
    assert stats["hits"] == {"hot": 0, "warm": 1, "cold": 0} and stats["misses"] == 1
    ray_local.kill(find_cache_actor(config.cache_actor_name))


def test_a_worker_goes_on_when_the_actor_is_gone(ray_local, tiny_config, tmp_path):
    config = cache_config(tiny_config, tmp_path)
    actor = get_or_create_cache_actor(config)
    client = CacheActorClient(actor, config.cache_actor_name, retry_s=3600.0)
    client.put_many({"k": b"v"})
    ray_local.kill(actor)
    deadline = time.monotonic() + 30
    while client.num_failures == 0:  # ray.kill returns at once; a call may still reach the actor before it dies
        assert time.monotonic() < deadline
        client.put_many({"k2": b"v2"})
        assert client.get_many(["nope"]) == {}
    assert client.actor is None and client.get_many(["k"]) == {} and client.stats() is None


def test_client_without_actor_is_all_misses(ray_local):
    assert CacheActorClient.connect(f"none-{uuid.uuid4().hex[:8]}") is None
    client = CacheActorClient(None, f"none-{uuid.uuid4().hex[:8]}", retry_s=3600.0)
    client.put_many({"k": b"v"})
    assert client.get_many(["k"]) == {} and client.stats() is None


@pytest.mark.parametrize("detached", [False, True])
def test_actor_options(ray_local, tiny_config, tmp_path, detached):
    config = cache_config(tiny_config, tmp_path, cache_actor_detached=detached)
    actor = get_or_create_cache_actor(config)
    assert get_or_create_cache_actor(config)._actor_id == actor._actor_id  # one per name
    assert find_cache_actor(config.cache_actor_name)._actor_id == actor._actor_id  # found in namespace vlray
    info = ray_local._private.state.actors(actor._actor_id.hex())  # GCS's record (no public field for it)
    assert (info["Name"], info["IsDetached"]) == (config.cache_actor_name, detached)
    ray_local.kill(actor)


def test_pipeline_workers_use_the_actor_the_factory_starts(ray_local, tiny_config, sample_images, tmp_path):
    from actors.inference_pipeline import InferencePipeline

    config = cache_config(tiny_config, tmp_path)
    requests = [{"id": f"r{i}", "prompt": q, "images": [str(sample_images[0])], "max_tokens": 3}
                for i, q in enumerate(["What?", "Why?"])]
    with InferencePipeline(config, num_workers=1, num_cpus_per_worker=1) as pipeline:
        assert pipeline.worker_info()[0]["cache"] == f"actor {config.cache_actor_name}"
        pipeline.run(requests[:1])
        pipeline.run(requests[1:])
        stats = pipeline.stats()
    assert stats["num_images"] == 2 and stats["num_images_encoded"] == 1
    assert stats["cache"]["puts"] == 2 and stats["cache"]["hits"]["hot"] == 2
    ray_local.kill(find_cache_actor(config.cache_actor_name))


def test_a_killed_cache_actor_costs_time_not_answers(ray_local, tiny_config, tiny_loaded, sample_images, tmp_path):
    """The fault: the cache actor dies under a working ModelWorker. The worker goes on without it (encoding its
    images again, the same answers), and finds the cache actor started in its place, whose warm tier on disk
    still holds what the dead one stored."""
    from actors.model_worker import ModelWorker

    # No hot tier: every entry goes to warm files, which outlive the actor's process. No KV prefix cache: it
    # would serve the repeated prompts without the vision encoder, cache actor or not.
    config = cache_config(tiny_config, tmp_path, cache_hot_bytes=0, cache_actor_retry_s=1.0,
                          enable_prefix_caching=False)
    actor = get_or_create_cache_actor(config)
    requests = [{"id": f"r{i}", "prompt": "What is this?", "images": [str(image)], "max_tokens": 4}
                for i, image in enumerate(sample_images[:3])]
    worker = ModelWorker.options(num_cpus=1).remote(config)
    try:
        before = ray_local.get(worker.generate.remote(requests))
        assert ray_local.get(worker.stats.remote()).num_images_encoded == 3

        ray_local.kill(actor)
        wait_until_dead(ray_local, actor)
        without = ray_local.get(worker.generate.remote(requests))
        assert ray_local.get(worker.stats.remote()).num_images_encoded == 6  # encoded again: slower, not wrong

        replacement = get_or_create_cache_actor(config)  # on the same folder
        time.sleep(config.cache_actor_retry_s)  # the worker looks the name up again after this long
        after = ray_local.get(worker.generate.remote(requests))
        stats = ray_local.get(worker.stats.remote())
        replacement_stats = ray_local.get(replacement.stats.remote())
    finally:
        ray_local.kill(worker)
    expected = LLM(tiny_config.with_updates(backend="hf", cache=False), loaded=tiny_loaded).generate(requests)
    for results in (before, without, after):
        assert [r.token_ids for r in results] == [r.token_ids for r in expected]
    assert stats.num_images_encoded == 6  # the third round: every image from the new actor's warm tier
    assert replacement_stats["hits"]["warm"] == 6  # 3 preprocessed images + 3 encoder outputs
    ray_local.kill(replacement)
