"""/metrics in Prometheus text format, parsed with prometheus_client and checked after known traffic."""

import asyncio
import math

import pytest
from prometheus_client.parser import text_string_to_metric_families

from poller_server.metrics import Metrics


async def scrape(http_client, base_url):
    response = await http_client.fetch(base_url + "/metrics", raise_error=False)
    assert response.code == 200, response.body
    assert response.headers["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name, **labels):
    return samples[(name, tuple(sorted(labels.items())))]


def request_count(samples, method, request_type, code):
    return value(samples, "poller_request_duration_seconds_count",
                 method=method, request_type=request_type, code=str(code))


class TestAfterTraffic:
    @pytest.mark.gen_test
    async def test_counts_after_known_traffic(self, api, http_client, base_url):
        for user in ("jdoe", "jdoe", "asmith"):
            assert (await api("POST", request="new", user=user)).code == 200
        claimed = await api("GET", request="next", claim="1", user="jdoe")
        assert claimed.json["job_id"] == 1
        lease_id = claimed.json["lease_id"]
        assert (await api("POST", request="complete", job_id="1", lease_id=lease_id)).code == 200
        assert (await api("POST", request="failed", job_id="2", reason="bad namelist")).code == 200
        assert (await api("POST", request="requeue", job_id="2")).code == 200
        assert (await api("GET", request="job", job_id="x")).code == 400
        assert (await api("GET", request="all")).code == 200

        samples = await scrape(http_client, base_url)

        assert value(samples, "poller_jobs", status="new") == 2
        assert value(samples, "poller_jobs", status="in_progress") == 0
        assert value(samples, "poller_jobs", status="complete") == 1
        assert value(samples, "poller_jobs", status="failed") == 0
        assert value(samples, "poller_jobs_created_total") == 3
        assert value(samples, "poller_jobs_claimed_total") == 1
        assert value(samples, "poller_jobs_completed_total") == 1
        assert value(samples, "poller_jobs_failed_total") == 1
        assert value(samples, "poller_jobs_requeued_total") == 1
        assert value(samples, "poller_lease_expiries_total") == 0
        assert value(samples, "poller_waiting_requests") == 0

        assert request_count(samples, "POST", "new", 200) == 3
        assert request_count(samples, "GET", "next", 200) == 1
        assert request_count(samples, "POST", "complete", 200) == 1
        assert request_count(samples, "GET", "job", 400) == 1
        assert request_count(samples, "GET", "all", 200) == 1
        assert value(samples, "poller_request_duration_seconds_sum",
                     method="POST", request_type="new", code="200") > 0

        # 3 creates, a claim, a completion, a failure and a requeue: seven journal records.
        assert value(samples, "poller_journal_append_seconds_count") == 7
        assert value(samples, "poller_journal_append_seconds_sum") > 0
        assert value(samples, "poller_journal_fsync_seconds_count") >= 1
        assert value(samples, "poller_journal_last_seq") == 7
        assert value(samples, "poller_journal_writes_failing") == 0
        assert value(samples, "poller_journal_last_fsync_age_seconds") >= 0

    @pytest.mark.gen_test
    async def test_scrape_counts_itself_next_time(self, http_client, base_url):
        await scrape(http_client, base_url)
        samples = await scrape(http_client, base_url)
        assert request_count(samples, "GET", "metrics", 200) == 1

    @pytest.mark.gen_test
    async def test_waiting_requests(self, api, http_client, base_url, runtime):
        waiting = asyncio.ensure_future(api("GET", request="next", user="nobody-yet", wait="10"))
        for _ in range(500):
            if runtime.service.waiters.count:
                break
            await asyncio.sleep(0.01)
        samples = await scrape(http_client, base_url)
        assert value(samples, "poller_waiting_requests") == 1

        assert (await api("POST", request="new", user="nobody-yet")).code == 200
        assert (await waiting).json["job_id"] == 1

    @pytest.mark.gen_test(timeout=15)
    async def test_lease_expiry_is_counted(self, api, http_client, base_url, runtime):
        assert (await api("POST", request="new", user="jdoe")).code == 200
        assert (await api("GET", request="next", claim="1", lease="1")).code == 200
        for _ in range(1000):
            if runtime.service.counters["lease_expired"]:
                break
            await asyncio.sleep(0.01)
        samples = await scrape(http_client, base_url)
        assert value(samples, "poller_lease_expiries_total") == 1
        assert value(samples, "poller_jobs", status="new") == 1

    @pytest.mark.gen_test
    async def test_snapshot_and_recovery(self, http_client, base_url, runtime):
        samples = await scrape(http_client, base_url)
        assert math.isnan(value(samples, "poller_snapshot_age_seconds"))
        assert value(samples, "poller_snapshot_duration_seconds") == 0
        assert value(samples, "poller_recovery_seconds") == pytest.approx(runtime.recovery_seconds)

        await runtime.snapshotter.take(fork=False)
        samples = await scrape(http_client, base_url)
        assert value(samples, "poller_snapshot_age_seconds") >= 0
        assert value(samples, "poller_snapshot_duration_seconds") > 0
        assert value(samples, "poller_snapshot_failing") == 0


class TestRegistry:
    def test_each_app_has_its_own_registry(self, runtime):
        first = Metrics(runtime.service)
        second = Metrics(runtime.service)
        first.observe_request("GET", "all", 200, 0.01)
        assert b'request_type="all"' in first.render()
        assert b'request_type="all"' not in second.render()


class TestServerProcess:
    def test_metrics_over_real_server(self, server_factory):
        server = server_factory()
        assert server.call("POST", request="new", user="jdoe").code == 200
        response = server.call("GET", url_path="/metrics")
        assert response.code == 200
        families = {family.name: family for family in text_string_to_metric_families(response.body.decode())}
        assert families["poller_jobs_created"].samples[0].value == 1
        assert families["poller_open_connections"].samples[0].value >= 1
        assert families["poller_recovery_seconds"].samples[0].value >= 0
