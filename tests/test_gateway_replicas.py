"""Two gateway replicas sharing one real Redis (Debian's redis-server, started here on a
free port): usage counted exactly under concurrent load, and one quota and one rate limit
per key whichever replica a request reaches."""
from __future__ import annotations

import shutil
import subprocess
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import httpx
import pytest

from mmserve.gateway.keys import utcnow
from mmserve.gateway.store import open_store, run
from test_gateway import create_key, free_port, start_gateway

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None,
                                reason="needs Debian's redis-server (make setup installs it)")


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    port = free_port()
    folder = tmp_path_factory.mktemp("redis")
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 20
    while True:
        try:
            import redis

            redis.Redis.from_url(url).ping()
            break
        except Exception:  # noqa: BLE001 - not up yet
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                pytest.fail("redis-server did not start")
            time.sleep(0.05)
    yield url
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture(scope="module")
def audit(tmp_path_factory):
    return tmp_path_factory.mktemp("gateway-audit") / "audit.jsonl"


@pytest.fixture(scope="module")
def replicas(server, repository, redis_url):
    gateways = [start_gateway(server, repository, redis_url) for _ in range(2)]
    yield gateways
    for gateway in gateways:
        gateway.stop()


def _fire(replicas, key: str, bodies: list[dict]) -> list[int]:
    """Every body sent at once, alternating between the replicas; their statuses in order."""
    def send(i_body):
        i, body = i_body
        url = replicas[i % len(replicas)].url + "/v1/embeddings"
        return httpx.post(url, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=60).status_code

    with ThreadPoolExecutor(max_workers=12) as pool:
        return list(pool.map(send, enumerate(bodies)))


def test_usage_is_exact_across_replicas(replicas, redis_url, repository, audit):
    a = create_key(redis_url, repository, audit, "--tenant", "acme", "--products", "text_embed,clip_text_embed")
    b = create_key(redis_url, repository, audit, "--tenant", "globex", "--products", "text_embed")
    since = utcnow() - timedelta(minutes=1)
    bodies_a = [{"model": ("text_embed", "clip_text_embed")[i % 2], "input": ["x"] * (1 + i % 3)} for i in range(30)]
    bodies_b = [{"model": "text_embed", "input": f"text {i}"} for i in range(18)]
    with ThreadPoolExecutor(max_workers=2) as both:
        statuses = list(both.map(lambda job: _fire(replicas, *job), [(a["key"], bodies_a), (b["key"], bodies_b)]))
    assert all(s == 200 for s in statuses[0] + statuses[1])
    store = open_store(redis_url)
    rows = run(store.usage(since))
    got = Counter()
    for row in rows:
        got[(row.tenant, row.product, row.status, "requests")] += row.requests
        got[(row.tenant, row.product, row.status, "items")] += row.items
    expected = Counter()
    for body in bodies_a:
        expected[("acme", body["model"], 200, "requests")] += 1
        expected[("acme", body["model"], 200, "items")] += len(body["input"])
    expected[("globex", "text_embed", 200, "requests")] = 18
    expected[("globex", "text_embed", 200, "items")] = 18
    assert got == expected


def test_one_quota_and_one_rate_limit_across_replicas(replicas, redis_url, repository, audit):
    quota = create_key(redis_url, repository, audit, "--tenant", "umbrella", "--products", "text_embed", "--quota", "10")
    statuses = _fire(replicas, quota["key"], [{"model": "text_embed", "input": "q"}] * 24)
    assert Counter(statuses) == {200: 10, 429: 14}
    rate = create_key(redis_url, repository, audit, "--tenant", "initech", "--products", "text_embed", "--rate", "2/s")
    started = time.monotonic()
    statuses = _fire(replicas, rate["key"], [{"model": "text_embed", "input": "r"}] * 16)
    elapsed = time.monotonic() - started
    assert 2 <= statuses.count(200) <= 2 + int(elapsed * 2) + 1  # a burst of one second, then 2/s
    assert statuses.count(429) >= 16 - (2 + int(elapsed * 2) + 1)
