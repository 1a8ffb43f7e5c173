"""`mmserve soak`, short, against the session's real server: a mixed load over every
product with no failed request, RSS sampled for the server and each Python stub, the
report written. The figures' arithmetic (windows, RSS growth, verdict) is checked on
made-up samples below. The 10-minute run is in docs/reliability.md."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mmserve.soak import EXIT_ERRORS, EXIT_PASS, EXIT_RSS_GROWTH, Record, RssSample, SoakConfig, rss_growth, summarise
from mmserve.supervisor import python_stubs


@pytest.mark.timeout(300)
def test_a_short_soak_drives_every_product_without_errors_and_samples_memory(server, client, tmp_path: Path):
    out = tmp_path / "soak"
    done = subprocess.run(
        [sys.executable, "-m", "mmserve.cli", "soak", "--url", server.grpc_url, "--minutes", "0.2",
         "--concurrency", "4", "--window", "4", "--max-rss-growth", "25", "--out", str(out)],
        capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["errors"] == {} and results["requests"] == results["answered"] > 0
    products = {p.name for p in client.products() if p.state == "READY"}
    assert set(results["pipelines"]) == products
    assert all(p["requests"] > 0 and p["errors"] == 0 for p in results["pipelines"].values()), results["pipelines"]
    assert len(results["windows"]) >= 3 and all(w["p99_ms"] >= w["p50_ms"] > 0 for w in results["windows"])

    rss = results["rss"]
    stubs = {stub.instance for stub in python_stubs(server.pid).values()}
    assert stubs and stubs | {"tritonserver", "total"} <= set(rss["growth"])
    assert all(rss["growth"][label]["warm_kib"] > 0 for label in stubs | {"tritonserver"})
    assert len(rss["series"]) >= 5
    assert (out / "summary.md").read_text().startswith("# Soak")
    assert (out / "soak.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "0 failed" in done.stdout and "-> PASS" in done.stdout


def _config(tmp_path: Path, **overrides) -> SoakConfig:
    return SoakConfig(**{"minutes": 1.0, "concurrency": 2, "out": tmp_path, "url": "localhost:1", **overrides})


def _samples(server: list[int], stub: list[int], stub_pids: list[int] | None = None) -> list[RssSample]:
    """One sample per 10 s over 100 s."""
    pids = stub_pids or [2] * len(stub)
    return [RssSample(10.0 * i, {"tritonserver": s, "a_0_0": t}, {"tritonserver": 1, "a_0_0": p})
            for i, (s, t, p) in enumerate(zip(server, stub, pids))]


def test_rss_growth_compares_the_median_after_warm_up_with_the_last_tenth():
    # warm-up ends at 20 s: the 20-30 s samples are the base, the samples from 90 s on the end
    samples = _samples([500, 900, 1000, 1000, 1010, 1020, 1030, 1040, 1050, 1100],
                       [100, 100, 100, 100, 100, 100, 100, 100, 100, 100])
    growth = rss_growth(samples, warmup_end_s=20.0, duration_s=100.0)
    assert growth["tritonserver"]["warm_kib"] == 1000 and growth["tritonserver"]["end_kib"] == 1100
    assert growth["tritonserver"]["growth_pct"] == 10.0
    assert growth["a_0_0"]["growth_pct"] == 0.0
    assert growth["total"]["warm_kib"] == 1100 and growth["total"]["growth_pct"] == pytest.approx(100 * 100 / 1100, abs=0.01)


def test_a_restarted_stub_is_reported_without_a_growth_figure():
    samples = _samples([1000] * 10, [100] * 10, stub_pids=[2] * 5 + [3] * 5)
    growth = rss_growth(samples, warmup_end_s=20.0, duration_s=100.0)
    assert growth["a_0_0"]["growth_pct"] is None and "replaced" in growth["a_0_0"]["note"]


MIB = 1024  # the samples are in KiB


@pytest.mark.parametrize(
    "errors, stub_mib, code",
    [(0, [50] * 10, EXIT_PASS), (1, [50] * 10, EXIT_ERRORS), (0, [50] * 9 + [60], EXIT_RSS_GROWTH),
     (0, [50] * 9 + [54], EXIT_PASS), (3, [50] * 9 + [60], EXIT_ERRORS)],
    ids=["pass", "a-failed-request", "rss-grew", "a-step-below-the-mib-floor", "both"],
)
def test_the_verdict_fails_on_any_error_or_growth_above_the_limits(
    tmp_path: Path, errors: int, stub_mib: list[int], code: int
):
    records = [Record(i * 0.5, "p", 0.01, "ServerError" if i < errors else None) for i in range(200)]
    config = _config(tmp_path, max_rss_growth_pct=5.0, min_rss_growth_mib=8.0)
    samples = _samples([1000 * MIB] * 10, [m * MIB for m in stub_mib])
    results = summarise(records, samples, {}, config, {"p": "text_embed"}, {}, 100.0, "test")
    assert results["exit_code"] == code
    assert results["errors"] == ({"ServerError": errors} if errors else {})
    assert [w["requests"] for w in results["windows"]] == [60, 60, 60, 20]
    assert results["pipelines"]["p"]["requests"] == 200


def test_either_a_url_or_a_repository(tmp_path: Path):
    with pytest.raises(ValueError, match="either --url"):
        SoakConfig(minutes=1, concurrency=1, out=tmp_path)
    with pytest.raises(ValueError, match="either --url"):
        SoakConfig(minutes=1, concurrency=1, out=tmp_path, url="h:1", repository=tmp_path)
