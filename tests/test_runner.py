"""poller-runner as a real process against a real server: results, leases, signals, arguments."""

import json
import os
import signal
import subprocess
import sys

import pytest

from conftest import load_runs, wait_for
from poller_server.client import PollerClient
from poller_server.runner import build_command, build_environment, config_env_name, expand_argument

# mppwidth values above this fail in the 240-run test: 75 of the runs.
MAX_MPPWIDTH = 1350

# Checks what the runner passed and fails wide runs, as a site's launch script might.
CHECKING_COMMAND = r"""
import json, os, sys
job_id, casename, log = sys.argv[1], sys.argv[2], sys.argv[3]
with open(os.environ["POLLER_JOB_FILE"], encoding="utf-8") as f:
    job = json.load(f)
if job_id != os.environ["POLLER_JOB_ID"] or str(job["job_id"]) != job_id:
    sys.exit("job id mismatch")
if casename != job["casename"] or casename != os.environ["POLLER_CONFIG_CASENAME"]:
    sys.exit("casename mismatch")
if job["user"] != os.environ["POLLER_USER"] or "lease_id" in job:
    sys.exit("bad job file")
with open(log, "a", encoding="utf-8") as f:
    f.write(job_id + "\n")
width = int(os.environ["POLLER_CONFIG_MPPWIDTH"])
if width > %d:
    sys.stderr.write("mppwidth %%d exceeds the queue limit\n" %% width)
    sys.exit(3)
""" % MAX_MPPWIDTH

# Creates the file named by its argument once it runs, then runs until its parent
# (the runner) goes away, at most 30 s.
RUN_UNTIL_ORPHANED = (
    "import os, sys, time\n"
    "open(sys.argv[1], 'w').close()\n"
    "parent = os.getppid()\n"
    "deadline = time.time() + 30\n"
    "while os.getppid() == parent and time.time() < deadline:\n"
    "    time.sleep(0.05)\n"
)

# Runs until a file appears, at most 30 s.
RUN_UNTIL_FILE = (
    "import os, sys, time\n"
    "deadline = time.time() + 30\n"
    "while not os.path.exists(sys.argv[1]) and time.time() < deadline:\n"
    "    time.sleep(0.05)\n"
)


class RunnerProcess:
    """A ``poller-runner`` child process with its output in a file."""

    def __init__(self, tmp_path, url: str, options: list[str], command: list[str], name: str) -> None:
        self.log_path = tmp_path / f"runner-{name}.log"
        self.log_file = open(self.log_path, "w", encoding="utf-8")
        argv = [sys.executable, "-m", "poller_server.runner", "--url", url, "--runner-name", name,
                *options, "--", *command]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.log_file,
                                     stderr=subprocess.STDOUT)

    @property
    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8")

    def wait(self, timeout: float = 60) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("runner did not exit:\n" + self.log) from None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log_file.close()


@pytest.fixture
def start_runner(tmp_path):
    """Start ``poller-runner`` processes: ``start_runner(url, options, command, name=...)``."""
    started: list[RunnerProcess] = []

    def start(url: str, options: list[str], command: list[str], name: str = "runner-a") -> RunnerProcess:
        runner = RunnerProcess(tmp_path, url, options, command, name)
        started.append(runner)
        return runner

    yield start
    for runner in started:
        runner.stop()


def python(code: str, *args: str) -> list[str]:
    return [sys.executable, "-c", code, *args]


def job_status(client: PollerClient, job_id: int, status: str):
    job = client.get(job_id)
    return job if job is not None and job["status"] == status else None


# -- the command's inputs -----------------------------------------------------------------


def test_template_fills_separate_arguments():
    job = {"job_id": 7, "id": 7, "user": "zoë", "status": "in_progress", "lease_id": "secret",
           "casename": "a b; rm -rf /", "mppwidth": 240}

    argv = build_command(["run", "{casename}", "--width={mppwidth}", "{{literal}}", "{'a': 1}", "{user}"],
                         job, "/tmp/job.json")

    assert argv == ["run", "a b; rm -rf /", "--width=240", "{literal}", "{'a': 1}", "zoë"]


def test_template_unknown_field_rejected():
    with pytest.raises(ValueError, match="no field 'compset'"):
        expand_argument("{compset}", {"job_id": 1})


def test_environment_carries_config_fields():
    job = {"job_id": 7, "id": 7, "user": "zoë", "status": "in_progress", "lease_id": "secret",
           "run-spec": "/x", "mppwidth": 240, "debug": True}

    env = build_environment(job, "/tmp/job.json", {"PATH": "/bin", "POLLER_CONFIG_STALE": "x"})

    assert env["PATH"] == "/bin"
    assert env["POLLER_JOB_ID"] == "7"
    assert env["POLLER_USER"] == "zoë"
    assert env["POLLER_JOB_FILE"] == "/tmp/job.json"
    assert env["POLLER_CONFIG_RUN_SPEC"] == "/x"
    assert env["POLLER_CONFIG_MPPWIDTH"] == "240"
    assert env["POLLER_CONFIG_DEBUG"] == "true"
    assert "POLLER_CONFIG_STALE" not in env
    assert not any("secret" in value for value in env.values())
    assert config_env_name("stop_n") == "POLLER_CONFIG_STOP_N"


# -- runs against a server -------------------------------------------------------------------


def test_runner_runs_e3sm_runs(server_factory, start_runner, tmp_path):
    server = server_factory()
    client = PollerClient(server.url)
    runs = load_runs()
    expected_failed = set()
    for run in runs:
        config = {key: value for key, value in run.items() if key != "user"}
        job = client.create(run["user"], config)
        if run["mppwidth"] > MAX_MPPWIDTH:
            expected_failed.add(job["job_id"])
    ran_log = tmp_path / "ran.log"

    runner = start_runner(server.url, ["--concurrency", "4", "--max-jobs", str(len(runs)), "--wait", "1"],
                          python(CHECKING_COMMAND, "{job_id}", "{casename}", str(ran_log)))

    assert runner.wait(60) == 0, runner.log
    jobs = client.list_jobs()
    assert len(jobs) == len(runs)
    assert 0 < len(expected_failed) < len(runs)
    for job in jobs:
        assert job["attempts"] == 1, job
        assert job["runner"] == "runner-a", job
        if job["job_id"] in expected_failed:
            assert job["status"] == "failed", job
            assert job["reason"].startswith("exit status 3"), job
            assert f"mppwidth {job['mppwidth']} exceeds the queue limit" in job["reason"], job
        else:
            assert job["status"] == "complete", job
            assert "reason" not in job, job
    ran = sorted(int(line) for line in ran_log.read_text().split())
    assert ran == sorted(job["job_id"] for job in jobs)
    assert runner.log.count(" started: user ") == len(runs)
    assert runner.log.count(" ended: ") == len(runs)


def test_signal_death_recorded_as_failure(server_factory, start_runner):
    server = server_factory()
    client = PollerClient(server.url)
    job = client.create("jdoe", {"casename": "killed"})

    runner = start_runner(server.url, ["--once", "--wait", "1"],
                          python("import os, signal, sys; sys.stderr.write('dying\\n'); os.kill(os.getpid(), 9)"))

    assert runner.wait() == 0, runner.log
    failed = client.get(job["job_id"])
    assert failed["status"] == "failed"
    assert failed["reason"].startswith("killed by signal SIGKILL")
    assert "dying" in failed["reason"]


def test_template_typo_stops_runner_and_keeps_jobs(server_factory, start_runner):
    server = server_factory()
    client = PollerClient(server.url)
    jobs = [client.create("jdoe", {"casename": f"case{number}"}) for number in range(3)]

    runner = start_runner(server.url, ["--wait", "1"], ["true", "{casenmae}"])

    assert runner.wait() == 1, runner.log
    assert "no field 'casenmae'" in runner.log
    assert "fix the command template" in runner.log
    for job in jobs:
        assert client.get(job["job_id"])["status"] == "new"


def test_job_without_template_field_fails_on_second_claim(server_factory, start_runner):
    server = server_factory()
    client = PollerClient(server.url)
    lacking = client.create("jdoe", {"casename": "a"})
    complete = client.create("jdoe", {"casename": "b", "mppwidth": 240})

    first = start_runner(server.url, ["--wait", "1"], ["true", "{mppwidth}"], name="first")
    assert first.wait() == 1, first.log
    assert client.get(lacking["job_id"])["status"] == "new"

    # A restarted runner meets the job a second time: it fails, and the queue moves on.
    second = start_runner(server.url, ["--max-jobs", "2", "--wait", "1"], ["true", "{mppwidth}"], name="second")
    assert second.wait() == 0, second.log
    failed = client.get(lacking["job_id"])
    assert failed["status"] == "failed"
    assert "no field 'mppwidth'" in failed["reason"]
    assert client.get(complete["job_id"])["status"] == "complete"


def test_job_without_template_field_fails_once_template_worked(server_factory, start_runner):
    server = server_factory()
    client = PollerClient(server.url)
    complete = client.create("jdoe", {"casename": "a", "compset": "F1850"})
    lacking = client.create("jdoe", {"casename": "b"})

    runner = start_runner(server.url, ["--max-jobs", "2", "--wait", "1"], ["true", "{compset}"])

    assert runner.wait() == 0, runner.log
    assert client.get(complete["job_id"])["status"] == "complete"
    failed = client.get(lacking["job_id"])
    assert failed["status"] == "failed"
    assert "no field 'compset'" in failed["reason"]


def test_missing_command_stops_runner(server_factory, start_runner, tmp_path):
    server = server_factory()
    client = PollerClient(server.url)
    job = client.create("jdoe", {"casename": "x"})

    runner = start_runner(server.url, ["--wait", "1"], [str(tmp_path / "no-such-command")])

    assert runner.wait() == 1, runner.log
    assert client.get(job["job_id"])["status"] == "new"
    assert "cannot start the command" in runner.log


def test_heartbeat_keeps_lease(server_factory, start_runner):
    server = server_factory()
    client = PollerClient(server.url)
    job = client.create("jdoe", {"casename": "long"})

    # Without heartbeats the 1 s lease would expire during the 3 s command,
    # the job would go back to new and the late completion would be a 409.
    runner = start_runner(server.url, ["--once", "--wait", "1", "--lease", "1", "--heartbeat", "0.25"],
                          python("import time; time.sleep(3)"))

    assert runner.wait() == 0, runner.log
    done = client.get(job["job_id"])
    assert done["status"] == "complete", runner.log
    assert done["attempts"] == 1


def test_killed_runner_job_finished_by_second(server_factory, start_runner, tmp_path):
    server = server_factory()
    client = PollerClient(server.url)
    job = client.create("jdoe", {"casename": "survives"})
    # A 3 s lease heartbeated every second leaves room for a loaded machine's
    # stalls; a missed heartbeat would requeue the job and count one more attempt.
    started = tmp_path / "command-started"
    first = start_runner(server.url, ["--wait", "1", "--lease", "3"], python(RUN_UNTIL_ORPHANED, str(started)),
                         name="first")
    # Kill only once the command runs. A runner killed before the claim's response
    # reached it never held the job, so the server undoes that claim uncounted.
    assert wait_for(started.exists, 15), first.log
    assert job_status(client, job["job_id"], "in_progress"), client.get(job["job_id"])

    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(10)
    returned = wait_for(lambda: job_status(client, job["job_id"], "new"), 15)
    assert returned, client.get(job["job_id"])
    second = start_runner(server.url, ["--once", "--wait", "1"], ["true"], name="second")

    assert second.wait() == 0, second.log
    finished = client.get(job["job_id"])
    assert finished["status"] == "complete"
    assert finished["runner"] == "second"
    assert finished["attempts"] == 2


def test_sigterm_lets_running_job_finish(server_factory, start_runner, tmp_path):
    server = server_factory()
    client = PollerClient(server.url)
    first = client.create("jdoe", {"casename": "running"})
    second = client.create("jdoe", {"casename": "waiting"})
    gate = tmp_path / "gate"
    runner = start_runner(server.url, ["--wait", "1", "--grace", "30"], python(RUN_UNTIL_FILE, str(gate)))
    # Wait for the command, not only the claim: a job whose claim reaches the
    # runner after the signal is requeued instead of run.
    assert wait_for(lambda: f"Job {first['job_id']} started" in runner.log, 15), runner.log

    runner.proc.send_signal(signal.SIGTERM)
    assert wait_for(lambda: "taking no more jobs" in runner.log, 10), runner.log
    gate.touch()

    assert runner.wait(30) == 0, runner.log
    assert client.get(first["job_id"])["status"] == "complete"
    assert client.get(second["job_id"])["status"] == "new"
    assert "attempts" not in client.get(second["job_id"])


def test_sigterm_after_grace_requeues_job(server_factory, start_runner, tmp_path):
    server = server_factory()
    client = PollerClient(server.url)
    job = client.create("jdoe", {"casename": "stuck"})
    runner = start_runner(server.url, ["--wait", "1", "--grace", "0.5"],
                          python(RUN_UNTIL_FILE, str(tmp_path / "never")))
    assert wait_for(lambda: f"Job {job['job_id']} started" in runner.log, 15), runner.log

    runner.proc.send_signal(signal.SIGTERM)

    assert runner.wait(30) == 0, runner.log
    requeued = client.get(job["job_id"])
    assert requeued["status"] == "new"
    assert requeued["attempts"] == 1
    assert f"Job {job['job_id']} requeued" in runner.log


def test_runner_usage_errors():
    result = subprocess.run([sys.executable, "-m", "poller_server.runner", "--concurrency", "2"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "missing COMMAND" in result.stderr


@pytest.mark.parametrize("option, value, message", [
    ("--concurrency", "abc", "argument --concurrency: invalid value 'abc': must be a positive integer (1 or more)"),
    ("--concurrency", "0", "argument --concurrency: invalid value '0': must be a positive integer (1 or more)"),
    ("--max-jobs", "1.5", "argument --max-jobs: invalid value '1.5': must be a positive integer (1 or more)"),
    ("--wait", "soon", "argument --wait: invalid number of seconds 'soon': must be a number"),
    ("--lease", "-1", "argument --lease: invalid number of seconds '-1': must be 0 to 31536000 (a year)"),
    ("--grace", "inf", "argument --grace: invalid number of seconds 'inf': must be 0 to 31536000 (a year)"),
    ("--wait", "1e400", "argument --wait: invalid number of seconds '1e400': must be 0 to 31536000 (a year)"),
    ("--lease", "0", "invalid --lease 0: must be at least 1 second"),
])
def test_runner_bad_option_names_value(option, value, message):
    result = subprocess.run([sys.executable, "-m", "poller_server.runner", option, value, "--", "true"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert message in result.stderr
    assert "positive_int" not in result.stderr


def test_runner_wait_above_server_maximum(server_factory):
    server = server_factory()
    result = subprocess.run([sys.executable, "-m", "poller_server.runner", "--url", server.url, "--wait", "9999",
                             "--", "true"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "invalid wait '9999': must be 0 to 60 seconds" in result.stderr
    assert "9999.0" not in result.stderr


def test_runner_uses_poller_url(server_factory, start_runner, tmp_path):
    server = server_factory()
    client = PollerClient(server.url)
    job = client.create("jdoe", {"casename": "env"})
    env = dict(os.environ, POLLER_URL=server.url)
    output = tmp_path / "out.json"

    result = subprocess.run(
        [sys.executable, "-m", "poller_server.runner", "--once", "--wait", "1", "--",
         sys.executable, "-c", "import shutil, sys; shutil.copy(sys.argv[1], sys.argv[2])", "{job_file}", str(output)],
        env=env, capture_output=True, text=True, timeout=30,
    )

    assert result.returncode == 0, result.stderr
    assert client.get(job["job_id"])["status"] == "complete"
    assert json.loads(output.read_text(encoding="utf-8"))["casename"] == "env"


def write_tokens(path, tokens: dict) -> str:
    path.write_text("".join(f"{token}  {scopes}  {scopes.replace(',', '-')}\n" for scopes, token in tokens.items()),
                    encoding="utf-8")
    path.chmod(0o600)
    return str(path)


def test_runner_with_token(server_factory, start_runner, tmp_path):
    tokens = {"read,submit": "operator-token-0123456789", "run": "runner-token-0123456789"}
    server = server_factory("--token-file", write_tokens(tmp_path / "server-tokens", tokens))
    client = PollerClient(server.url, token=tokens["read,submit"])
    job = client.create("jdoe", {"casename": "secure"})
    runner_token = tmp_path / "runner-token"
    runner_token.write_text(tokens["run"] + "\n", encoding="utf-8")

    anonymous = start_runner(server.url, ["--once", "--wait", "1"], ["true"], name="anonymous")
    assert anonymous.wait() == 1, anonymous.log
    assert "cannot take jobs" in anonymous.log
    authorized = start_runner(server.url, ["--once", "--wait", "1", "--token-file", str(runner_token)], ["true"],
                              name="authorized")

    assert authorized.wait() == 0, authorized.log
    assert client.get(job["job_id"])["status"] == "complete"
    assert client.get(job["job_id"])["runner"] == "authorized"


def test_sigterm_with_run_token_requeues_job(server_factory, start_runner, tmp_path):
    tokens = {"read,submit": "operator-token-0123456789", "run": "runner-token-0123456789"}
    server = server_factory("--token-file", write_tokens(tmp_path / "server-tokens", tokens))
    client = PollerClient(server.url, token=tokens["read,submit"])
    job = client.create("jdoe", {"casename": "held"})
    runner_token = tmp_path / "runner-token"
    runner_token.write_text(tokens["run"] + "\n", encoding="utf-8")
    runner = start_runner(server.url, ["--wait", "1", "--grace", "0.2", "--token-file", str(runner_token)],
                          python(RUN_UNTIL_FILE, str(tmp_path / "never")))
    assert wait_for(lambda: f"Job {job['job_id']} started" in runner.log, 15), runner.log

    runner.proc.send_signal(signal.SIGTERM)

    assert runner.wait(30) == 0, runner.log
    # A run-scope token may requeue its own job by naming the lease.
    assert f"Job {job['job_id']} requeued" in runner.log
    assert client.get(job["job_id"])["status"] == "new"


def test_example_runner_script(server_factory, tmp_path):
    server = server_factory()
    client = PollerClient(server.url)
    good = client.create("jdoe", {"casename": "good"})
    bad = client.create("jdoe", {"casename": "bad"})
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "example_runner.py")
    command = ("import json, sys; job = json.load(sys.stdin); sys.stderr.write('checked\\n'); "
               "sys.exit(0 if job['casename'] == 'good' else 5)")
    log = open(tmp_path / "example.log", "w", encoding="utf-8")
    proc = subprocess.Popen([sys.executable, script, server.url, sys.executable, "-c", command],
                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        finished = wait_for(lambda: job_status(client, bad["job_id"], "failed"), 20)
        assert finished, (tmp_path / "example.log").read_text()
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
    assert client.get(good["job_id"])["status"] == "complete"
    assert client.get(bad["job_id"])["reason"].startswith("exit status 5: checked")


def test_colliding_config_names_are_logged(caplog):
    job = {"job_id": 3, "user": "jdoe", "status": "in_progress", "stop-n": 6, "stop_n": 12}
    with caplog.at_level("WARNING", logger="poller_server.runner"):
        env = build_environment(job, "/tmp/job.json", {})
    assert env["POLLER_CONFIG_STOP_N"] == "12"
    assert any("'stop-n' and 'stop_n' both map to POLLER_CONFIG_STOP_N" in record.getMessage()
               for record in caplog.records)
