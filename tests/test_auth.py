"""Bearer tokens: scopes per request type, 401 and 403, the token file, reload on SIGHUP."""

import os
import signal

import pytest

from conftest import wait_for
from poller_server.app import make_app
from poller_server.auth import TokenFile, TokenFileError, load_token_file, required_scope

TOKENS = {
    "read": "read-0123456789abcdef-token",
    "submit": "submit-0123456789abcdef-token",
    "run": "run-0123456789abcdef-token",
    "admin": "admin-0123456789abcdef-token",
}
ALL_SCOPES = "all-scopes-0123456789abcdef"
UNKNOWN = "unknown-0123456789abcdef-token"


def write_token_file(path, lines, mode=0o600):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    os.chmod(path, mode)
    return path


def token_lines():
    lines = ["# scope tokens for tests", ""]
    lines += [f"{token}  {scope}  {scope}-client" for scope, token in TOKENS.items()]
    lines.append(f"{ALL_SCOPES} read,submit,run,admin operator")
    return lines


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def token_path(tmp_path):
    return write_token_file(tmp_path / "tokens", token_lines())


@pytest.fixture
def app(runtime, config, token_path):
    return make_app(runtime.service, config, TokenFile(str(token_path)), runtime)


# (method, parameters, scope the request needs)
SCOPE_TABLE = [
    ("GET", {"request": "all"}, "read"),
    ("GET", {"request": "new"}, "read"),
    ("GET", {"request": "in_progress"}, "read"),
    ("GET", {"request": "complete"}, "read"),
    ("GET", {"request": "failed"}, "read"),
    ("GET", {"request": "job", "job_id": "1"}, "read"),
    ("GET", {"request": "next"}, "read"),
    ("GET", {"request": "next", "claim": "0"}, "read"),
    ("GET", {"request": "next", "claim": "1"}, "run"),
    ("POST", {"request": "new", "user": "jdoe", "casename": "F1850"}, "submit"),
    ("POST", {"request": "in_progress", "job_id": "1"}, "run"),
    ("POST", {"request": "complete", "job_id": "1"}, "run"),
    ("POST", {"request": "failed", "job_id": "1", "reason": "node failure"}, "run"),
    ("POST", {"request": "heartbeat", "job_id": "1", "lease_id": "abc"}, "run"),
    ("POST", {"request": "all", "status": "new"}, "admin"),
    ("POST", {"request": "delete", "job_id": "1"}, "admin"),
    ("POST", {"request": "requeue", "job_id": "1"}, "admin"),
    ("POST", {"request": "requeue", "job_id": "1", "lease_id": "abc"}, "run"),
]


class TestScopes:
    @pytest.mark.parametrize("method, params, needed", SCOPE_TABLE,
                             ids=[f"{m}-{'-'.join(p.values())}" for m, p, _ in SCOPE_TABLE])
    @pytest.mark.gen_test
    async def test_scope_per_request_type(self, api, method, params, needed):
        created = await api("POST", request="new", user="jdoe", headers=bearer(TOKENS["submit"]))
        assert created.code == 200, created

        for scope, token in TOKENS.items():
            response = await api(method, headers=bearer(token), **params)
            if scope == needed:
                assert response.code not in (401, 403), (scope, response)
            else:
                assert response.code == 403, (scope, response)
                assert f"'{needed}'" in response.json["error"]
                assert f"'{scope}-client'" in response.json["error"]
                challenge = response.headers["WWW-Authenticate"]
                assert 'error="insufficient_scope"' in challenge
                assert f'scope="{needed}"' in challenge

    @pytest.mark.parametrize("method, params, needed", SCOPE_TABLE)
    def test_required_scope_table(self, method, params, needed):
        claim = params.get("claim") == "1"
        leased = "lease_id" in params
        assert required_scope(method, params["request"], claim, leased) == needed

    @pytest.mark.gen_test
    async def test_token_with_all_scopes_passes_everywhere(self, api):
        for method, params, _ in SCOPE_TABLE:
            response = await api(method, headers=bearer(ALL_SCOPES), **params)
            assert response.code not in (401, 403), (method, params, response)

    @pytest.mark.gen_test
    async def test_metrics_needs_read(self, api, http_client, base_url):
        for scope, token in TOKENS.items():
            response = await http_client.fetch(base_url + "/metrics", headers=bearer(token), raise_error=False)
            assert response.code == (200 if scope == "read" else 403), scope


class TestUnauthenticated:
    @pytest.mark.gen_test
    async def test_missing_token_is_401(self, api):
        response = await api("GET", request="all")
        assert response.code == 401
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="poller"'
        assert "Authorization: Bearer" in response.json["error"]

    @pytest.mark.gen_test
    async def test_unknown_token_is_401(self, api):
        response = await api("GET", request="all", headers=bearer(UNKNOWN))
        assert response.code == 401
        assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
        assert UNKNOWN not in response.body.decode()

    @pytest.mark.gen_test
    async def test_other_scheme_is_401(self, api):
        response = await api("GET", request="all", headers={"Authorization": "Basic dXNlcjpwYXNz"})
        assert response.code == 401
        assert 'error="invalid_request"' in response.headers["WWW-Authenticate"]

    @pytest.mark.gen_test
    async def test_token_prefix_is_401(self, api):
        response = await api("GET", request="all", headers=bearer(TOKENS["read"][:-1]))
        assert response.code == 401

    @pytest.mark.gen_test
    async def test_rejected_create_changes_nothing(self, api):
        response = await api("POST", request="new", user="jdoe", headers=bearer(UNKNOWN))
        assert response.code == 401
        forbidden = await api("POST", request="new", user="jdoe", headers=bearer(TOKENS["read"]))
        assert forbidden.code == 403
        listing = await api("GET", request="all", headers=bearer(TOKENS["read"]))
        assert listing.json == {}

    @pytest.mark.gen_test
    async def test_healthz_needs_no_token(self, http_client, base_url):
        response = await http_client.fetch(base_url + "/healthz", raise_error=False)
        assert response.code == 200

    @pytest.mark.gen_test
    async def test_metrics_without_token_is_401(self, http_client, base_url):
        response = await http_client.fetch(base_url + "/metrics", raise_error=False)
        assert response.code == 401


class TestTokenFile:
    def test_valid_file_loads_every_token(self, token_path):
        tokens = load_token_file(str(token_path))
        assert [t.name for t in tokens] == ["read-client", "submit-client", "run-client", "admin-client", "operator"]
        assert tokens[4].scopes == {"read", "submit", "run", "admin"}

    @pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644])
    def test_group_or_other_access_is_rejected(self, tmp_path, mode):
        path = write_token_file(tmp_path / "tokens", token_lines(), mode)
        with pytest.raises(TokenFileError) as error:
            load_token_file(str(path))
        assert f"{mode:04o}" in str(error.value)
        assert "chmod 600" in str(error.value)

    @pytest.mark.parametrize("line, fragment", [
        ("only-two-fields-0123456789 read", "expected 3 fields"),
        ("a-token-0123456789abcdef read runner extra", "expected 3 fields"),
        ("a-token-0123456789abcdef read,write runner", "unknown scope 'write'"),
        ("a-token-0123456789abcdef read, runner", "unknown scope ''"),
        ("shorttok read runner", "shorter than 16"),
        ("bad\"token-0123456789abcdef read runner", "invalid token"),
        ("a-token-0123456789abcdef read run/ner", "invalid name"),
        (f"{TOKENS['read']} read second-name", "same as on line 3"),
        ("a-token-0123456789abcdef read read-client", "already used on line 3"),
    ])
    def test_bad_line_names_line_number(self, tmp_path, line, fragment):
        lines = ["# header", "", *token_lines()[2:], line]
        path = write_token_file(tmp_path / "tokens", lines)
        with pytest.raises(TokenFileError) as error:
            load_token_file(str(path))
        message = str(error.value)
        assert f"line {len(lines)}" in message
        assert fragment in message
        for token in line.split()[:1]:
            assert token not in message

    def test_file_without_tokens_is_rejected(self, tmp_path):
        path = write_token_file(tmp_path / "tokens", ["# nothing here"])
        with pytest.raises(TokenFileError, match="contains no tokens"):
            load_token_file(str(path))

    def test_reload_keeps_old_tokens_on_error(self, token_path, caplog):
        tokens = TokenFile(str(token_path))
        write_token_file(token_path, ["not a valid line at all"])
        assert tokens.reload() is False
        assert tokens.find(TOKENS["read"]) is not None
        assert tokens.reload_failures == 1
        assert any("line 1" in record.getMessage() for record in caplog.records)


class TestServerProcess:
    def test_bad_permissions_stop_start(self, server_factory, tmp_path):
        path = write_token_file(tmp_path / "tokens", token_lines(), 0o644)
        server = server_factory("--token-file", str(path), expect_listening=False)
        assert server.wait_exit() == 1
        assert "accessible by group or others" in server.log

    def test_bad_line_stops_start(self, server_factory, tmp_path):
        path = write_token_file(tmp_path / "tokens", ["# tokens", f"{TOKENS['read']} read"])
        server = server_factory("--token-file", str(path), expect_listening=False)
        assert server.wait_exit() == 1
        assert "line 2: expected 3 fields" in server.log
        assert TOKENS["read"] not in server.log

    def test_non_loopback_host_needs_tokens(self, server_factory):
        # The server must exit before binding, so nothing listens on 0.0.0.0.
        server = server_factory("--host", "0.0.0.0", expect_listening=False)
        assert server.wait_exit() == 2
        assert "--allow-unauthenticated" in server.log
        assert "Poller listening" not in server.log

    def test_start_line_says_loopback_only(self, server_factory):
        server = server_factory()
        listening = next(line for line in server.lines if "Poller listening" in line)
        assert "no token file: every request is allowed, loopback only" in listening
        assert server.call("GET", request="all").code == 200

    def test_sighup_reloads_and_no_token_is_logged(self, server_factory, tmp_path):
        path = write_token_file(tmp_path / "tokens", [f"{TOKENS['read']} read first"])
        server = server_factory("--token-file", str(path), "--log-level", "debug")
        assert "1 token from" in next(line for line in server.lines if "Poller listening" in line)
        assert server.call("GET", request="all", headers=bearer(TOKENS["read"])).code == 200
        assert server.call("GET", request="all", headers=bearer(TOKENS["submit"])).code == 401

        write_token_file(path, [f"{TOKENS['read']} read first", f"{TOKENS['submit']} submit,read second"])
        server.proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: "reloaded: 2 tokens" in server.log), server.log
        assert server.call("GET", request="all", headers=bearer(TOKENS["submit"])).code == 200
        created = server.call("POST", request="new", user="jdoe", headers=bearer(TOKENS["submit"]))
        assert created.code == 200

        write_token_file(path, [f"{TOKENS['admin']} admin third", f"{TOKENS['run']} everything"])
        server.proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: "reload failed" in server.log), server.log
        assert "line 2" in server.log
        assert server.call("GET", request="all", headers=bearer(TOKENS["submit"])).code == 200
        assert server.call("GET", request="all", headers=bearer(TOKENS["admin"])).code == 401
        server.call("GET", request="all", headers={"Authorization": f"Basic {UNKNOWN}"})
        server.call("GET", request="all", headers=bearer(UNKNOWN))
        server.terminate()

        access = [line for line in server.lines if "tornado.access" in line]
        assert any("token_name=second" in line for line in access)
        assert any("token_name=first" in line for line in access)
        for secret in [*TOKENS.values(), UNKNOWN]:
            assert secret not in server.log
