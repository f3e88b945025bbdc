"""The access log and the JSON log format, and that no token reaches a log line."""

import json
import logging
import os
import sys

import pytest

from poller_server.logs import JsonFormatter

TOKEN = "logging-test-token-0123456789abcdef"


def make_record(message, *args, extra=None, exc_info=None):
    logger = logging.getLogger("poller_server.test")
    return logger.makeRecord(logger.name, logging.WARNING, __file__, 1, message, args, exc_info, extra=extra)


class TestJsonFormatter:
    def test_fields_and_extra(self):
        line = JsonFormatter().format(make_record("Job %d moved to %s", 7, "complete", extra={"job_id": 7}))
        entry = json.loads(line)
        assert entry["message"] == "Job 7 moved to complete"
        assert entry["level"] == "warning"
        assert entry["logger"] == "poller_server.test"
        assert entry["job_id"] == 7
        assert entry["time"].endswith("Z")
        assert "args" not in entry
        assert "\n" not in line

    def test_exception_is_one_field(self):
        try:
            raise ValueError("bad value")
        except ValueError:
            record = make_record("Snapshot failed", exc_info=sys.exc_info())
        entry = json.loads(JsonFormatter().format(record))
        assert "ValueError: bad value" in entry["exception"]


class TestAccessLog:
    @pytest.mark.gen_test
    async def test_line_has_request_fields(self, api, caplog):
        caplog.set_level(logging.INFO, logger="tornado.access")
        assert (await api("POST", request="new", user="jdoe", casename="F1850")).code == 200
        assert (await api("GET", request="job", job_id="x")).code == 400
        records = [r for r in caplog.records if r.name == "tornado.access"]
        assert len(records) == 2
        created, bad = records
        assert created.levelno == logging.INFO
        message = created.getMessage()
        assert message.startswith("200 POST /poller/update/ request=new job_id=1 user=\"jdoe\" token_name=- ")
        assert message.endswith("ms")
        assert created.request_type == "new"
        assert created.job_id == 1
        assert created.user == "jdoe"
        assert created.token_name is None
        assert created.status == 200
        assert created.ms >= 0
        assert bad.levelno == logging.WARNING
        assert bad.getMessage().startswith("400 GET /poller/update/ request=job ")


class TestServerProcess:
    def test_json_format_with_tokens(self, server_factory, tmp_path):
        token_path = tmp_path / "tokens"
        token_path.write_text(f"{TOKEN} read,submit,run operator-1\n", encoding="utf-8")
        os.chmod(token_path, 0o600)
        server = server_factory("--token-file", str(token_path), "--log-format", "json", "--log-level", "debug")
        headers = {"Authorization": f"Bearer {TOKEN}"}
        assert server.call("POST", request="new", user="jdoe", headers=headers).code == 200
        assert server.call("GET", request="next", claim="1", headers=headers).code == 200
        assert server.call("GET", request="all", headers={"Authorization": f"Bearer {TOKEN}x"}).code == 401
        assert server.terminate() == 0

        entries = [json.loads(line) for line in server.lines if line.strip()]
        assert any(entry["message"].startswith("Poller listening on http://") for entry in entries)
        access = [entry for entry in entries if entry["logger"] == "tornado.access"]
        assert len(access) == 3
        claim = access[1]
        assert claim["request_type"] == "next"
        assert claim["job_id"] == 1
        assert claim["token_name"] == "operator-1"
        assert claim["status"] == 200
        assert claim["method"] == "GET"
        assert claim["ms"] >= 0
        assert access[2]["status"] == 401
        assert access[2]["level"] == "warning"
        assert any(entry["logger"].startswith("poller_server.") for entry in entries)
        assert TOKEN not in server.log
