"""The Python API over Ray: a ModelWorker answers ray.get(worker.generate.remote(...)); the facade splits
requests over workers and keeps their order."""

import pytest

from actors.inference_pipeline import InferencePipeline
from actors.placement import WorkerResources, plan_worker_resources
from actors.worker_factory import split_evenly
from vlray.config import EngineConfig
from vlray.llm import LLM


@pytest.fixture(scope="module")
def requests_with_images(sample_images):
    return [
        {"id": "a", "prompt": "What is in this image?", "images": [str(sample_images[0])]},
        {"id": "b", "prompt": "Say hello."},
        {"id": "c", "prompt": "Compare.", "images": [str(sample_images[1]), str(sample_images[2])]},
        {"id": "bad", "prompt": "x", "images": ["/does/not/exist.png"]},
        {"id": "d", "messages": [{"role": "user", "content": "Count to three."}], "max_tokens": 5},
    ]


def test_worker_answers_through_ray_get(ray_local, tiny_config, tiny_loaded, requests_with_images):
    from actors.model_worker import ModelWorker

    worker = ModelWorker.options(num_cpus=1).remote(tiny_config)
    results = ray_local.get(worker.generate.remote(requests_with_images))
    local = LLM(tiny_config.with_updates(backend="hf"), loaded=tiny_loaded).generate(requests_with_images)
    assert [r.id for r in results] == ["a", "b", "c", "bad", "d"]
    assert [r.token_ids for r in results] == [r.token_ids for r in local]
    assert results[3].error_kind == "image_not_found"
    info = ray_local.get(worker.info.remote())
    assert (info["profile"], info["device"], info["dtype"]) == ("cpu", "cpu", "float32")
    stats = ray_local.get(worker.stats.remote())
    assert (stats.num_requests, stats.num_ok, stats.num_failed) == (5, 4, 1)
    ray_local.kill(worker)


def test_pipeline_facade_with_two_workers(ray_local, tiny_config, tiny_loaded, requests_with_images):
    requests = requests_with_images * 2
    with InferencePipeline(tiny_config, num_workers=2, num_cpus_per_worker=1) as pipeline:
        results = pipeline.run(requests)
        stats = pipeline.stats()
        nodes = {info["pid"] for info in pipeline.worker_info()}
    local = LLM(tiny_config.with_updates(backend="hf"), loaded=tiny_loaded).generate(requests)
    assert [r.id for r in results] == [r["id"] for r in requests]
    assert [r.token_ids for r in results] == [r.token_ids for r in local]
    assert len(nodes) == 2  # two separate worker processes
    assert stats["num_requests"] == 10 and stats["num_failed"] == 2
    assert stats["num_generated_tokens"] == sum(r.num_generated_tokens for r in local)
    assert stats["requests_per_second"] > 0
    assert set(stats["stage_seconds"]) >= {"load", "preprocess", "transfer", "compute", "postprocess"}


def test_a_model_that_cannot_load_fails_at_creation(ray_local, tmp_path):
    with pytest.raises(Exception, match="was not found"):
        InferencePipeline(EngineConfig(model=str(tmp_path / "missing")), num_workers=1, num_cpus_per_worker=1)


def test_resource_plan():
    config = EngineConfig(model="m")
    assert plan_worker_resources({"CPU": 8, "GPU": 2}, 2, config) == WorkerResources(num_cpus=1.0, num_gpus=1.0)
    assert plan_worker_resources({"CPU": 8}, 2, config) == WorkerResources(num_cpus=4.0, num_gpus=0.0)
    assert plan_worker_resources({"CPU": 8, "GPU": 1}, 1, config.with_updates(device_profile="cpu")).num_gpus == 0
    with pytest.raises(ValueError, match="one model per GPU"):
        plan_worker_resources({"CPU": 8, "GPU": 1}, 2, config)


def test_split_evenly():
    assert split_evenly(list(range(5)), 2) == [[0, 1, 2], [3, 4]]
    assert split_evenly([1], 3) == [[1]]


def test_streaming_through_the_worker_and_the_pipeline(ray_local, tiny_config, tiny_loaded, requests_with_images):
    from vlray.schema import GenerationResult

    with InferencePipeline(tiny_config, num_workers=2, num_cpus_per_worker=1) as pipeline:
        events = list(pipeline.stream(requests_with_images))
    results = {e.id: e for e in events if isinstance(e, GenerationResult)}
    local = {r.id: r for r in LLM(tiny_config.with_updates(backend="hf"), loaded=tiny_loaded).generate(requests_with_images)}
    assert {k: r.token_ids for k, r in results.items()} == {k: r.token_ids for k, r in local.items()}
    texts = {}
    for event in events:
        if not isinstance(event, GenerationResult):
            texts[event.request_id] = texts.get(event.request_id, "") + event.text
    assert all(texts.get(k, "") == r.text for k, r in results.items() if r.ok)
