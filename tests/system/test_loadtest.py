"""`hatchery loadtest` on the smallest settings: it stops by itself, and on loopback
every request succeeds and every simulated worker's lease is accepted."""

from hatchery.bench.loadtest import run_loadtest


def test_loadtest_runs_bounded_and_reports_no_errors():
    report = run_loadtest(seconds=1.5, reward_clients=4, batch=4, workers=4, population=8)
    reward, optimizer = report["reward"], report["optimizer"]
    assert reward["error_count"] == 0 and reward["rpcs"]["Score"]["requests"] > 0
    latency = reward["rpcs"]["Score"]["latency_ms"]
    assert 0 < latency["p50"] <= latency["p99"] <= latency["max"]
    assert optimizer["error_count"] == 0 and optimizer["rejected_reports"] == {}
    leases_per_generation = 8 // 2  # population 8, two members per lease
    assert 0 < optimizer["generations"] * leases_per_generation <= optimizer["rpcs"]["ReportResult"]["requests"]
