"""The HTTP contract of /poller/update/, request by request, over real HTTP."""

import json

import pytest

from poller_server.jobs import RESERVED_KEYS

STATUSES = ("new", "in_progress", "complete", "failed")


async def create(api, user="jdoe", **config):
    response = await api("POST", request="new", user=user, **config)
    assert response.code == 200, response
    return response.json


def assert_error(response, code, *fragments):
    assert response.code == code, response
    assert response.headers["Content-Type"].startswith("application/json")
    message = response.json["error"]
    for fragment in fragments:
        assert fragment in message, message


class TestCreate:
    @pytest.mark.gen_test
    async def test_form_create_returns_job(self, api):
        job = await create(api, user="jdoe", casename="F1850.ne30", mppwidth="240")
        assert job["job_id"] == 1
        assert job["id"] == 1
        assert job["user"] == "jdoe"
        assert job["status"] == "new"
        assert job["created"].endswith("Z")
        assert job["created"] == job["updated"]
        assert job["casename"] == "F1850.ne30"
        assert job["mppwidth"] == "240"  # form values stay strings

    @pytest.mark.gen_test
    async def test_json_create_keeps_types(self, api):
        response = await api("POST", json_body={
            "request": "new", "user": "zoë", "mppwidth": 240, "debug": True, "tags": ["a", 1.5], "none": None,
        })
        assert response.code == 200, response
        job = response.json
        assert job["mppwidth"] == 240
        assert job["debug"] is True
        assert job["tags"] == ["a", 1.5]
        assert job["none"] is None

    @pytest.mark.gen_test
    async def test_config_options_as_string(self, api):
        job = await create(api, config_options=json.dumps({"compset": "FC5", "stop_n": 5}), mach="titan")
        assert job["compset"] == "FC5"
        assert job["stop_n"] == 5
        assert job["mach"] == "titan"

    @pytest.mark.gen_test
    async def test_config_options_as_json_object(self, api):
        response = await api("POST", json_body={"request": "new", "user": "u", "config_options": {"res": "ne30"}})
        assert response.json["res"] == "ne30"

    @pytest.mark.gen_test
    async def test_multipart_create(self, api):
        boundary = "XyZbOuNdArY"
        parts = []
        for name, value in (("request", "new"), ("user", "用户七"), ("casename", "B1850")):
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n')
        body = ("".join(parts) + f"--{boundary}--\r\n").encode()
        response = await api("POST", body=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        assert response.code == 200, response
        assert response.json["user"] == "用户七"
        assert response.json["casename"] == "B1850"

    @pytest.mark.gen_test
    async def test_query_parameters_of_post_count(self, api):
        response = await api("POST", body="casename=X", headers={"Content-Type": "application/x-www-form-urlencoded"},
                             request="new", user="jdoe")
        assert response.code == 200, response
        assert response.json["casename"] == "X"

    @pytest.mark.gen_test
    async def test_ids_grow_and_are_not_reused(self, api):
        first = await create(api)
        second = await create(api)
        assert (await api("POST", request="delete", job_id=second["job_id"])).code == 200
        third = await create(api)
        assert [first["job_id"], second["job_id"], third["job_id"]] == [1, 2, 3]

    @pytest.mark.gen_test
    async def test_non_ascii_round_trip(self, api):
        job = await create(api, user="zoë", note="Überprüfung 用户七 ✓")
        got = (await api("GET", request="job", job_id=job["job_id"])).json
        assert got["user"] == "zoë"
        assert got["note"] == "Überprüfung 用户七 ✓"


class TestCreateErrors:
    @pytest.mark.gen_test
    async def test_missing_user(self, api):
        assert_error(await api("POST", request="new", casename="x"), 400, "user")

    @pytest.mark.gen_test
    @pytest.mark.parametrize("user", ["", "x" * 129, "bad\nname", "tab\tname", "del\x7f", "c1\x85"])
    async def test_invalid_user(self, api, user):
        assert_error(await api("POST", request="new", user=user), 400, "invalid user")

    @pytest.mark.gen_test
    async def test_user_of_128_characters_is_accepted(self, api):
        job = await create(api, user="ü" * 128)
        assert job["user"] == "ü" * 128

    @pytest.mark.gen_test
    @pytest.mark.parametrize("key", sorted(RESERVED_KEYS - {"request", "user", "config_options"}))
    async def test_reserved_key_as_parameter(self, api, key):
        assert_error(await api("POST", request="new", user="u", **{key: "1"}), 400, repr(key), "reserved")

    @pytest.mark.gen_test
    @pytest.mark.parametrize("key", ["job_id", "status", "lease_id", "user"])
    async def test_reserved_key_inside_config_options(self, api, key):
        response = await api("POST", request="new", user="u", config_options=json.dumps({key: 1}))
        assert_error(response, 400, repr(key), "reserved")

    @pytest.mark.gen_test
    async def test_key_in_both_places(self, api):
        response = await api("POST", request="new", user="u", config_options='{"mach": "a"}', mach="b")
        assert_error(response, 400, "'mach'", "both")

    @pytest.mark.gen_test
    @pytest.mark.parametrize("text", ['{"a": NaN}', "[1, 2]", '"text"', "{bad json}", '{"a": 1e999}'])
    async def test_bad_config_options(self, api, text):
        assert_error(await api("POST", request="new", user="u", config_options=text), 400, "config_options")

    @pytest.mark.gen_test
    async def test_nothing_created_after_bad_requests(self, api):
        await api("POST", request="new", user="u", config_options="{")
        await api("POST", request="new", user="", mach="x")
        await api("POST", request="new", user="u", status="x")
        assert (await api("GET", request="all")).json == {}
        job = await create(api)
        assert job["job_id"] == 1


class TestStrictJson:
    @pytest.mark.gen_test
    @pytest.mark.parametrize("body, fragment", [
        (b'{"request": "new", "user": "u", "x": NaN}', "NaN"),
        (b'{"request": "new", "user": "u", "x": Infinity}', "Infinity"),
        (b'{"request": "new", "user": "u", "x": -Infinity}', "Infinity"),
        (b'{"request": "new", "user": "u", "x": 1e400}', "out of range"),
        (b'{"request": "new", "user": "u", "x": 123456789012345678901234567890}', "out of range"),
        (b'{"request": "new", "user": "u", "x": "\\ud800"}', "surrogate"),
        (b'{"request": "new", "user": "u", "x": ' + b"[" * 40 + b"]" * 40 + b"}", "nested"),
        (b'{"request": "new", "user": "u", "x": ' + b"[" * 100000 + b"]" * 100000 + b"}", "nested"),
        (b'{"request": "new", "user": "u", "x": {"a": 1, "a": 2}}', "more than once"),
        (b'{"request": "new", "user": "u",}', "JSON"),
        (b'[{"request": "new"}]', "object"),
        (b'{"request": "new", "user": "\xff"}', "UTF-8"),
    ])
    async def test_rejected(self, api, body, fragment):
        response = await api("POST", body=body, headers={"Content-Type": "application/json"})
        assert_error(response, 400, fragment)
        assert (await api("GET", request="all")).json == {}

    @pytest.mark.gen_test
    async def test_paired_surrogates_are_fine(self, api):
        body = b'{"request": "new", "user": "u", "emoji": "\\ud83c\\udf0d"}'
        response = await api("POST", body=body, headers={"Content-Type": "application/json"})
        assert response.code == 200, response
        assert response.json["emoji"] == "\U0001f30d"

    @pytest.mark.gen_test
    async def test_form_body_not_utf8(self, api):
        response = await api("POST", body=b"request=new&user=\xff\xfe",
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert_error(response, 400, "UTF-8")

    @pytest.mark.gen_test
    async def test_percent_encoded_value_not_utf8(self, api):
        response = await api("POST", body=b"request=new&user=%ff",
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert_error(response, 400, "UTF-8")

    @pytest.mark.gen_test
    async def test_unsupported_content_type(self, api):
        response = await api("POST", body=b"request=new", headers={"Content-Type": "text/plain"})
        assert_error(response, 415, "text/plain")


class TestParameters:
    @pytest.mark.gen_test
    async def test_missing_request(self, api):
        assert_error(await api("GET"), 400, "'request'")

    @pytest.mark.gen_test
    async def test_unknown_request(self, api):
        assert_error(await api("GET", request="bogus"), 400, "'bogus'")

    @pytest.mark.gen_test
    async def test_repeated_request_in_query(self, api):
        response = await api("GET", headers={}, request="all", user="u")
        assert response.code == 200
        api_url = api.url + "?request=all&request=new"
        response = await api.http_client.fetch(api_url, raise_error=False)
        assert response.code == 400
        assert "more than once" in json.loads(response.body)["error"]

    @pytest.mark.gen_test
    async def test_repeated_across_query_and_body(self, api):
        response = await api.http_client.fetch(
            api.url + "?request=new&user=a", method="POST", body="user=b", raise_error=False,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert response.code == 400
        assert "'user'" in json.loads(response.body)["error"]

    @pytest.mark.gen_test
    async def test_repeated_across_query_and_json(self, api):
        response = await api.http_client.fetch(
            api.url + "?request=new", method="POST", body='{"request": "new", "user": "a"}', raise_error=False,
            headers={"Content-Type": "application/json"},
        )
        assert response.code == 400
        assert "'request'" in json.loads(response.body)["error"]

    @pytest.mark.gen_test
    async def test_unknown_parameter(self, api):
        assert_error(await api("GET", request="job", job_id=1, jobid=1), 400, "'jobid'")

    @pytest.mark.gen_test
    @pytest.mark.parametrize("job_id", ["", "abc", "1.5", "-1", "0", " 1", "99999999999999999999999"])
    async def test_invalid_job_id(self, api, job_id):
        assert_error(await api("GET", request="job", job_id=job_id), 400, "job_id")

    @pytest.mark.gen_test
    async def test_missing_job_id(self, api):
        assert_error(await api("POST", request="complete"), 400, "job_id")

    @pytest.mark.gen_test
    async def test_json_job_id_may_be_number(self, api):
        await create(api)
        response = await api("POST", json_body={"request": "complete", "job_id": 1})
        assert response.code == 200, response
        response = await api("POST", json_body={"request": "complete", "job_id": True})
        assert_error(response, 400, "job_id")

    @pytest.mark.gen_test
    async def test_path_without_trailing_slash(self, api):
        response = await api.http_client.fetch(api.url.rstrip("/") + "?request=all", raise_error=False)
        assert response.code == 200
        assert json.loads(response.body) == {}


class TestReads:
    @pytest.mark.gen_test
    async def test_empty_reads_return_empty_object(self, api):
        for request in ("all", "next", *STATUSES):
            response = await api("GET", request=request)
            assert response.code == 200
            assert response.body == b"{}", request
        assert (await api("GET", request="job", job_id=5)).body == b"{}"

    @pytest.mark.gen_test
    async def test_reads_ignore_if_none_match(self, api):
        job = await create(api)
        first = await api("GET", request="job", job_id=job["job_id"])
        assert first.code == 200
        assert "Etag" not in first.headers
        # A conditional GET still gets the job, never an empty 304.
        again = await api("GET", request="job", job_id=job["job_id"], headers={"If-None-Match": "*"})
        assert again.code == 200
        assert again.json == job

    @pytest.mark.gen_test
    async def test_listings_by_status_and_user(self, api):
        for user in ("a", "b", "a", "b", "a"):
            await create(api, user=user)
        await api("POST", request="in_progress", job_id=2)
        await api("POST", request="complete", job_id=3)
        await api("POST", request="failed", job_id=4)
        everything = (await api("GET", request="all")).json
        assert [job["job_id"] for job in everything] == [1, 2, 3, 4, 5]
        assert [job["job_id"] for job in (await api("GET", request="all", user="a")).json] == [1, 3, 5]
        assert [job["job_id"] for job in (await api("GET", request="new")).json] == [1, 5]
        assert (await api("GET", request="new", user="b")).body == b"{}"
        assert [job["job_id"] for job in (await api("GET", request="in_progress")).json] == [2]
        assert [job["job_id"] for job in (await api("GET", request="complete", user="a")).json] == [3]
        assert [job["job_id"] for job in (await api("GET", request="failed", user="b")).json] == [4]

    @pytest.mark.gen_test
    async def test_next_is_oldest_new_job(self, api):
        for _ in range(4):
            await create(api)
        assert (await api("GET", request="next")).json["job_id"] == 1
        await api("POST", request="complete", job_id=1)
        await api("POST", request="delete", job_id=2)
        assert (await api("GET", request="next")).json["job_id"] == 3
        # next only peeks: the job stays new
        assert (await api("GET", request="next")).json["status"] == "new"

    @pytest.mark.gen_test
    async def test_next_after_requeue_of_older_job(self, api):
        for _ in range(3):
            await create(api)
        await api("POST", request="failed", job_id=1)
        assert (await api("GET", request="next")).json["job_id"] == 2
        assert (await api("POST", request="requeue", job_id=1)).code == 200
        assert (await api("GET", request="next")).json["job_id"] == 1

    @pytest.mark.gen_test(timeout=60)
    async def test_large_listing_is_complete(self, api, runtime):
        service = runtime.service
        for index in range(3000):
            await service.create(f"user{index % 7}", b'{"k":1}')
        listing = (await api("GET", request="all")).json
        assert [job["job_id"] for job in listing] == list(range(1, 3001))


class TestStatusMoves:
    @pytest.mark.gen_test
    @pytest.mark.parametrize("path", [
        ["in_progress", "complete"], ["in_progress", "failed"], ["complete"], ["failed"],
    ])
    async def test_forward_moves(self, api, path):
        job = await create(api)
        for status in path:
            response = await api("POST", request=status, job_id=job["job_id"])
            assert response.code == 200, response
            assert response.json["status"] == status
            assert (await api("GET", request="job", job_id=job["job_id"])).json["status"] == status

    @pytest.mark.gen_test
    @pytest.mark.parametrize("start, target", [
        (["complete"], "in_progress"), (["complete"], "failed"), (["failed"], "complete"),
        (["failed"], "in_progress"), (["in_progress"], "new"), (["complete"], "new"),
    ])
    async def test_backward_moves_conflict(self, api, start, target):
        job = await create(api)
        for status in start:
            await api("POST", request=status, job_id=job["job_id"])
        before = (await api("GET", request="job", job_id=job["job_id"])).json
        if target == "new":
            response = await api("POST", request="new", user="u", job_id=job["job_id"])
            assert_error(response, 400, "reserved")
        else:
            response = await api("POST", request=target, job_id=job["job_id"])
            assert_error(response, 409, before["status"])
        assert (await api("GET", request="job", job_id=job["job_id"])).json == before

    @pytest.mark.gen_test
    async def test_same_status_is_noop(self, api):
        job = await create(api)
        first = await api("POST", request="in_progress", job_id=1)
        again = await api("POST", request="in_progress", job_id=1)
        assert again.code == 200
        assert again.json == first.json
        assert job["job_id"] == 1

    @pytest.mark.gen_test
    async def test_move_of_missing_job(self, api):
        assert_error(await api("POST", request="complete", job_id=42), 404, "42")
        assert_error(await api("POST", request="delete", job_id=42), 404, "42")

    @pytest.mark.gen_test
    async def test_failed_keeps_reason(self, api):
        await create(api)
        response = await api("POST", request="failed", job_id=1, reason="walltime exceeded")
        assert response.json["reason"] == "walltime exceeded"
        assert (await api("GET", request="job", job_id=1)).json["reason"] == "walltime exceeded"

    @pytest.mark.gen_test
    async def test_delete_returns_job(self, api):
        job = await create(api, casename="x")
        response = await api("POST", request="delete", job_id=1)
        assert response.json == job
        assert (await api("GET", request="job", job_id=1)).body == b"{}"


class TestBulk:
    @pytest.mark.gen_test
    async def test_all_jobs(self, api):
        for user in ("a", "b", "a"):
            await create(api, user=user)
        await api("POST", request="complete", job_id=1)
        response = await api("POST", request="all", status="new")
        assert response.json == {"updated": 3}
        assert [job["status"] for job in (await api("GET", request="all")).json] == ["new"] * 3

    @pytest.mark.gen_test
    async def test_one_user(self, api):
        for user in ("a", "b", "a"):
            await create(api, user=user)
        response = await api("POST", request="all", status="failed", user="a")
        assert response.json == {"updated": 2}
        statuses = {job["job_id"]: job["status"] for job in (await api("GET", request="all")).json}
        assert statuses == {1: "failed", 2: "new", 3: "failed"}

    @pytest.mark.gen_test
    async def test_missing_and_bad_status(self, api):
        await create(api)
        assert_error(await api("POST", request="all"), 400, "status")
        assert_error(await api("POST", request="all", status="done"), 400, "'done'")
        assert (await api("GET", request="job", job_id=1)).json["status"] == "new"

    @pytest.mark.gen_test
    async def test_unknown_user_updates_nothing(self, api):
        await create(api)
        assert (await api("POST", request="all", status="complete", user="nobody")).json == {"updated": 0}


class TestMethods:
    @pytest.mark.gen_test
    @pytest.mark.parametrize("method, request_type", [
        ("POST", "next"), ("POST", "job"), ("GET", "delete"), ("GET", "heartbeat"), ("GET", "requeue"),
    ])
    async def test_method_not_allowed(self, api, method, request_type):
        response = await api(method, request=request_type, job_id=1)
        assert_error(response, 405, request_type)
        assert response.headers["Allow"]

    @pytest.mark.gen_test
    async def test_other_method(self, api):
        response = await api.http_client.fetch(api.url + "?request=all", method="DELETE", raise_error=False)
        assert response.code == 405
        assert "error" in json.loads(response.body)


class TestBodySize:
    @pytest.mark.gen_test
    async def test_body_over_limit(self, api, config):
        body = "request=new&user=u&blob=" + "x" * config.max_body_size
        response = await api("POST", body=body, headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert_error(response, 413, str(config.max_body_size))
        assert (await api("GET", request="all")).json == {}

    @pytest.mark.gen_test
    async def test_body_at_limit_is_read(self, api, config):
        prefix = "request=new&user=u&blob="
        body = prefix + "x" * (config.max_body_size - len(prefix))
        response = await api("POST", body=body, headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert response.code == 200, response
        assert len(response.json["blob"]) == config.max_body_size - len(prefix)


class TestServerErrors:
    @pytest.mark.gen_test
    async def test_bug_gives_500_without_details(self, api, runtime, monkeypatch, caplog):
        def broken(*args, **kwargs):
            raise RuntimeError("secret internal detail")

        monkeypatch.setattr(runtime.service.store, "list_ids", broken)
        response = await api("GET", request="all")
        assert response.code == 500
        assert "secret" not in response.body.decode()
        assert "error" in response.json
        assert any("secret internal detail" in record.getMessage() or record.exc_info for record in caplog.records)


class TestOtherPathsAndMethods:
    @pytest.mark.gen_test
    @pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH"])
    async def test_unsupported_method_is_json_405(self, api, method):
        response = await api.http_client.fetch(api.url + "?request=all", method=method, raise_error=False,
                                               body=None if method == "DELETE" else b"")
        assert response.code == 405
        assert response.headers["Allow"] == "GET, POST"
        assert method in json.loads(response.body)["error"]

    @pytest.mark.gen_test
    @pytest.mark.parametrize("path", ["/", "/poller/", "/poller/update/extra"])
    async def test_unknown_path_is_json_404(self, api, path):
        base = api.url.split("/poller/update/")[0]
        response = await api.http_client.fetch(base + path, raise_error=False)
        assert response.code == 404
        assert response.headers["Content-Type"].startswith("application/json")
        assert "/poller/update/" in json.loads(response.body)["error"]

    @pytest.mark.gen_test
    async def test_huge_job_id_is_400(self, api):
        response = await api("GET", request="job", job_id="9" * 5000)
        assert_error(response, 400, "job_id", "5000 characters")
        response = await api("POST", request="complete", job_id="9" * 5000)
        assert_error(response, 400, "job_id")

    @pytest.mark.gen_test
    async def test_error_cuts_long_values_short(self, api):
        response = await api("POST", request="new", user="x" * 100000)
        assert_error(response, 400, "invalid user", "100000 characters")
        assert len(response.body) < 500

    @pytest.mark.gen_test
    async def test_error_shows_json_spelling(self, api):
        response = await api("POST", json_body={"request": "all", "status": None})
        assert_error(response, 400, "invalid status null")
        response = await api("GET", request="job", json_body=None, job_id="true")
        assert_error(response, 400, "'true'")
        response = await api("POST", json_body={"request": "complete", "job_id": True})
        assert_error(response, 400, "invalid job_id true")

    @pytest.mark.gen_test
    @pytest.mark.parametrize("key, fragment", [
        ("a\nb", "control character"), ("c1\x9f", "control character"), ("k" * 129, "longer than 128"),
    ])
    async def test_bad_configuration_key(self, api, key, fragment):
        response = await api("POST", json_body={"request": "new", "user": "u", key: 1})
        assert_error(response, 400, fragment)
        assert (await api("GET", request="all")).body == b"{}"
