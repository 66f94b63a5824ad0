"""`orchestrator unlock` and the lock in `orchestrator jobs show`, as an operator runs them,
against real workers, PostgreSQL, Redis and a service that hangs: a live holder is shown
and refused unless forced, and the job still ends right after a force; a killed worker's
lock, once its heartbeat has stopped, and a lock nobody holds go without --force; free
locks, unknown jobs and bad ids are said clearly."""

from __future__ import annotations

import getpass
import json
import os
import re
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis

from api.app import create_app
from cli.embedded import free_port
from orchestrator.settings import Settings
from tests.conftest import make_env
from tests.integration.conftest import HAPPY_PATH, WRITES, Api, transitions
from tests.support.downstream_server import Reply
from tests.support.processes import start_worker, wait_for

pytestmark = pytest.mark.integration
CLI = str(Path(sys.executable).parent / "orchestrator")
OPERATOR = f"{getpass.getuser()}@{socket.gethostname()}"
# A heartbeat every LOCK_TTL/3 = 12 s: a holder counts as stopped 24 s after its last one,
# and its key lives 36 s, which leaves a dozen seconds to see it stale and remove it.
# Recovery takes any quiet job (3 s) that has no lock; the stage's timeout is far beyond
# any wait here, so only the lock decides who runs.
SETTINGS = {"LOCK_TTL": 36, "RECOVERY_STALE_AFTER": 3, "RECOVERY_INTERVAL": 1,
            "PLANNING_TIMEOUT": 300}


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, *args], env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=120)


def events(stderr: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def lock_line(shown: subprocess.CompletedProcess[str]) -> str:
    """`jobs show`'s lock line, unwrapped."""
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("lock "))
    end = next(i for i in range(start + 1, len(lines)) if not lines[i].startswith(" " * 11))
    return " ".join(line.strip() for line in lines[start:end]).removeprefix("lock").strip()


def shown_lock(env: dict[str, str], job_id: object) -> dict[str, Any]:
    shown = cli(env, "jobs", "show", str(job_id), "--json")
    assert shown.returncode == 0, shown.stderr
    return json.loads(shown.stdout)["lock"]


def old_holder_ended(worker: Any, job_id: object) -> dict[str, Any] | None:
    """The line of attempt 1 of PLANNING giving up its result: fenced out at its write,
    or discarding it because its heartbeat found the lock gone."""
    return next((e for e in worker.events() if e.get("job_id") == str(job_id) and (
        e.get("event") == "stage.fenced_out" and e.get("attempt") == 1
        or e.get("event") == "stage.skipped"
        and e.get("reason") == "lock lost during the stage; result discarded")), None)


def lock_key(env: dict[str, str], job_id: object) -> str:
    return f"{env['LOCK_KEY_PREFIX']}{job_id}"


@pytest.fixture(scope="module")
def stack(module_database, redis_url, downstream, log_dir):
    env = make_env(module_database, redis_url, downstream, **SETTINGS)
    worker = start_worker("cli-unlock-worker", env, log_dir)
    client = redis.Redis.from_url(redis_url)
    yield env, Api(create_app(Settings.from_env(env)).test_client()), worker, client
    client.close()
    worker.stop()


def test_a_live_holder_is_shown_refused_and_removed_only_by_force(stack, downstream):
    env, api, worker, client = stack
    job_id = uuid.uuid4()
    hung = threading.Event()
    downstream.script(job_id, "PLANNING", {1: Reply(release=hung, hang_for=300)})
    try:
        api.start(job_id)
        downstream.wait_call(job_id, "PLANNING", 1, timeout=60)
        token = client.get(lock_key(env, job_id))
        assert token is not None

        # The operator sees who holds the lock, for how long still, and its heartbeat
        line = lock_line(cli(env, "jobs", "show", str(job_id)))
        where = re.escape(f"on cli-unlock-worker@{socket.gethostname()} pid {worker.proc.pid}")
        taken = re.escape(f"taken by {socket.gethostname()} pid {worker.proc.pid}")
        assert re.fullmatch(rf"held \(ttl [\d.]+ s, {taken}\) by attempt 1 of PLANNING "
                            rf"\(since \S+Z, task [0-9a-f-]{{36}}, {where}\), heartbeat "
                            r"[\d.]+ s ago", line), line
        lock = shown_lock(env, job_id)
        assert lock["status"] == "held" and lock["key"] == lock_key(env, job_id)
        assert (lock["holder"]["stage_name"], lock["holder"]["attempt_number"]) == (
            "PLANNING", 1)
        assert lock["holder"]["running_on"] == (
            f"cli-unlock-worker@{socket.gethostname()} pid {worker.proc.pid}")
        assert 0 < lock["ttl_s"] <= 36 and lock["heartbeat_age_s"] < 24
        assert lock["heartbeat_interval_s"] == 12
        assert lock["taken_by"] == {"host": socket.gethostname(), "pid": worker.proc.pid}

        # Unlock refuses: the holder heartbeats; the lock stays, with the same holder
        refused = cli(env, "unlock", str(job_id))
        assert refused.returncode == 1, refused.stdout
        assert "lock held by attempt 1 of PLANNING" in refused.stderr
        assert "its holder is alive" in refused.stderr
        assert f"orchestrator unlock {job_id} --force" in refused.stderr
        assert client.get(lock_key(env, job_id)) == token

        # --force removes it, says what follows, and logs who did it
        forced = cli(env, "unlock", str(job_id), "--force")
        assert forced.returncode == 0, forced.stderr
        assert forced.stdout.startswith(
            f"job {job_id}: removed the lock of attempt 1 of PLANNING"), forced.stdout
        assert "RECOVERY_STALE_AFTER=3 s" in forced.stdout
        assert client.get(lock_key(env, job_id)) != token  # gone, or a new holder's
        [event] = [e for e in events(forced.stderr) if e["event"] == "lock.force_released"]
        assert (event["job_id"], event["operator"], event["stage"], event["attempt"]) == (
            str(job_id), OPERATOR, "PLANNING", 1)

        # Recovery resumes the job as attempt 2 while attempt 1 still waits on its service
        downstream.wait_call(job_id, "PLANNING", 2, timeout=60)
    finally:
        hung.set()  # now the old holder gets its answer, too late to write it
    job = api.wait_state(job_id, "COMPLETED", "FAILED", timeout=120)
    assert job["current_state"] == "COMPLETED"
    assert transitions(job) == HAPPY_PATH
    planning = [a for a in job["stages"] if a["stage_name"] == "PLANNING"]
    assert [(a["attempt_number"], a["status"]) for a in planning] == [
        (1, "FAILED"), (2, "SUCCESS")]
    assert planning[0]["error_message"] == "worker lost"
    # The old holder got its answer and wrote nothing (same process as attempt 2: threads)
    ended = wait_for(lambda: old_holder_ended(worker, job_id), 60, "the old holder to end")
    assert ended["event"] in ("stage.fenced_out", "stage.skipped"), ended
    assert not [e for e in worker.events() if e.get("job_id") == str(job_id)
                and e.get("event") in WRITES and (e.get("stage"), e.get("attempt")) == (
                    "PLANNING", 1)]
    assert lock_line(cli(env, "jobs", "show", str(job_id))) == "free"


def test_a_killed_workers_lock_goes_without_force_once_its_heartbeat_stopped(
        private_database, redis_url, downstream, log_dir):
    env = make_env(private_database, redis_url, downstream, **SETTINGS)
    api = Api(create_app(Settings.from_env(env)).test_client())
    job_id = uuid.uuid4()
    downstream.script(job_id, "PLANNING", {1: Reply(hang_for=300)})
    doomed = start_worker("cli-unlock-doomed", env, log_dir)
    try:
        api.start(job_id)
        downstream.wait_call(job_id, "PLANNING", 1, timeout=60)
        doomed.kill()  # SIGKILL: its lock stays until its TTL ends
    finally:
        doomed.stop()
    client = redis.Redis.from_url(redis_url)
    token = client.get(lock_key(env, job_id))
    assert token is not None
    # While its last heartbeat is recent, a dead holder cannot be told from a live one
    assert cli(env, "unlock", str(job_id)).returncode == 1
    assert client.get(lock_key(env, job_id)) == token

    # Two heartbeats missed: the lock is shown stale, and unlock removes it
    holder = (r"attempt 1 of PLANNING \(since \S+Z, task [0-9a-f-]{36}, on no worker that "
              r"answered\)")
    wait_for(lambda: shown_lock(env, job_id)["status"] == "stale", 60,
             "the lock to be shown stale", interval=1)
    line = lock_line(cli(env, "jobs", "show", str(job_id)))
    # (which process took it, from its token: the dead one, whom no broadcast reaches)
    taken = re.escape(f"taken by {socket.gethostname()} pid {doomed.proc.pid}")
    assert re.fullmatch(rf"held \(ttl [\d.]+ s, {taken}\) by {holder}, stale: no heartbeat "
                        r"for \d+ s "
                        r"\(one is due every 12 s, LOCK_TTL/3\); "
                        rf"`orchestrator unlock {job_id}` removes it", line), line
    removed = cli(env, "unlock", str(job_id))
    assert removed.returncode == 0, removed.stderr
    assert removed.stdout.startswith(
        f"job {job_id}: removed the stale lock (no heartbeat for "), removed.stdout
    [event] = [e for e in events(removed.stderr) if e["event"] == "lock.stale_released"]
    assert (event["job_id"], event["operator"]) == (str(job_id), OPERATOR)
    assert client.get(lock_key(env, job_id)) is None
    client.close()
    # The lock is free, the dead worker's attempt still open: shown as such
    line = lock_line(cli(env, "jobs", "show", str(job_id)))
    assert re.fullmatch(rf"free, but {holder} is still RUNNING, last heartbeat \d+ s ago: its "
                        r"worker died or lost the lock; recovery resumes the job", line), line
    assert shown_lock(env, job_id)["open_attempt"]["attempt_number"] == 1

    # A worker's recovery resumes the job at once, and it ends right
    standby = start_worker("cli-unlock-standby", env, log_dir)
    try:
        job = api.wait_state(job_id, "COMPLETED", "FAILED", timeout=120)
    finally:
        standby.stop()
    assert job["current_state"] == "COMPLETED"
    assert transitions(job) == HAPPY_PATH
    planning = [(a["attempt_number"], a["status"], a["error_message"])
                for a in job["stages"] if a["stage_name"] == "PLANNING"]
    assert planning == [(1, "FAILED", "worker lost"), (2, "SUCCESS", None)]


def test_a_lock_that_never_expires_and_nobody_holds_goes_without_force(stack):
    env, api, _, client = stack
    job_id = uuid.uuid4()
    # Given a lock left behind with no expiry, before the job's first stage could take it
    client.set(lock_key(env, job_id), "left-behind")
    api.start(job_id)
    wait_for(lambda: client.get(lock_key(env, job_id)) == b"left-behind"
             and api.job(job_id)["current_state"] == "PLANNING", 30, "the job to start")

    line = lock_line(cli(env, "jobs", "show", str(job_id)))
    assert line == (f"held (no ttl: never expires), stale: no attempt of PLANNING is "
                    f"running; `orchestrator unlock {job_id}` removes it")
    assert shown_lock(env, job_id)["holder"] is None
    removed = cli(env, "unlock", str(job_id))
    assert removed.returncode == 0, removed.stderr
    assert removed.stdout.startswith(f"job {job_id}: removed the stale lock (no attempt of "
                                     "PLANNING is running); recovery resumes"), removed.stdout

    # Then recovery resumes it and it runs through
    job = api.wait_state(job_id, "COMPLETED", "FAILED", timeout=120)
    assert job["current_state"] == "COMPLETED" and transitions(job) == HAPPY_PATH

    # A free lock is said to be free; one set again on the ended job goes too
    free = cli(env, "unlock", str(job_id))
    assert (free.returncode, free.stdout.strip()) == (0, f"job {job_id}: lock free; nothing "
                                                         "to do")
    assert shown_lock(env, job_id) == {"status": "free"}
    client.set(lock_key(env, job_id), "late", ex=60)
    assert "stale: the job is COMPLETED" in lock_line(cli(env, "jobs", "show", str(job_id)))
    ended = cli(env, "unlock", str(job_id))
    assert ended.returncode == 0, ended.stderr
    assert ended.stdout.strip() == f"job {job_id}: removed the lock left on a COMPLETED job"
    assert client.get(lock_key(env, job_id)) is None


def test_unknown_jobs_bad_ids_and_an_unreachable_redis_are_said_clearly(stack):
    env, api, _, _ = stack
    unknown = uuid.uuid4()
    missing = cli(env, "unlock", str(unknown))
    assert (missing.returncode, missing.stderr.strip()) == (1, f"job {unknown} not found")
    bad = cli(env, "unlock", "job-42")
    assert bad.returncode == 2
    assert "Invalid value for 'JOB_ID': 'job-42' is not a valid UUID" in bad.stderr
    helped = cli(env, "unlock", "--help")
    assert helped.returncode == 0 and "--force" in helped.stdout

    # Redis away: unlock cannot start; jobs show still shows the job, lock unknown
    job_id = uuid.uuid4()
    api.start(job_id)
    api.wait_state(job_id, "COMPLETED", "FAILED", timeout=120)
    away = {**env, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "STARTUP_TIMEOUT": "1"}
    refused = cli(away, "unlock", str(job_id))
    assert refused.returncode == 69
    assert refused.stderr.startswith("orchestrator: cannot reach Redis at REDIS_URL=")
    line = lock_line(cli(away, "jobs", "show", str(job_id)))
    assert re.fullmatch(r"unknown \(cannot reach Redis at REDIS_URL=redis://127\.0\.0\.1:\d+/0: "
                        r"connection refused\)", line), line
