"""A paper recipe's ``ray_job.sh`` submitted for real to a Ray cluster that the test starts (P3 Durian).

The test starts its own Ray head (``ray start --head --block`` with its own ports, temp dir and auth token, dashboard
included), then runs ``recipes/p3_durian/ray_job.sh`` -- the launcher a user runs against an existing cluster -- with
``RAY_DASHBOARD`` pointing at that head. ``ray job submit`` ships the recipe folder as the job's working dir and runs
``run_qwen2_5_vl_7b.sh`` in it with the stages ``prepare score``: Geometry3K-format data (the synthetic images and
answers of tests/integration/test_recipes.py, written in the hiyouga/geometry3k layout) -> verl parquet -> the
``visual_entropy`` scorer with one Ray scoring worker, which must attach to the test's cluster (``RAY_ADDRESS`` of the
job), not start a Ray of its own. Nothing is mocked.

The head runs without this venv on its ``PATH`` (a cluster started as ``/path/to/venv/bin/ray start``): the job's
``python3`` is then not this interpreter, so the job only works because ray_job.sh forwards ``PYTHON``.

``train`` is not among the stages: on a 2-core machine the tiny CPU training step makes the job ~95 s instead of
~30 s (it runs in test_recipes.py's P3 cases through the same launcher script). On an existing cluster it also needs
a logical GPU on the head (``--num-gpus=1``, the plugin's CPU platform keeps verl's ``GPU`` resource) and
``tiny_cpu_overrides`` without its ``ray_kwargs.ray_init.num_cpus/num_gpus`` (``ray.init`` refuses them when it
connects to a running cluster); so set up, the job's main_ppo also attached to the cluster and trained one step.

Teardown never calls ``ray stop``: that command kills every Ray process on the machine by name (other tests' clusters
included). The head is stopped by SIGTERM to its ``ray start --block`` process (which drains the node and stops what
it started); whatever is left of this cluster -- found as descendants of that process or by a marker variable in the
environment every cluster process inherits -- is then killed by PID, and the teardown fails if any survives.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
RECIPE = "p3_durian"
RECIPE_DIR = REPO / "recipes" / RECIPE
VENV_BIN = Path(sys.executable).parent
MARKER = "VERL_DIFFICULTY_TEST_RAY_HEAD"  # in the environment of every process of the test's cluster
N_TRAIN, N_VAL = 64, 8


# ---- the cluster ---------------------------------------------------------------------------------------------------

@dataclass
class RayHead:
    proc: subprocess.Popen
    temp_dir: Path
    token: str
    gcs_port: int
    dashboard_port: int

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def client_env(self) -> dict:
        """What `ray job submit` and ray.init() need to talk to this cluster (token auth)."""
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.temp_dir / "auth_token")}

    def get(self, path: str):
        req = urllib.request.Request(self.dashboard + path, headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.loads(r.read().decode())

    def logs(self) -> str:
        parts = [(self.temp_dir / "ray_start.log").read_text(errors="replace")[-3000:]]
        for name in ("dashboard.log", "dashboard_agent.log", "gcs_server.out", "raylet.out"):
            for f in sorted(self.temp_dir.glob(f"session_*/logs/{name}")):
                parts.append(f"--- {f}\n" + f.read_text(errors="replace")[-3000:])
        return "\n".join(parts)


def _free_ports(n: int) -> list[int]:
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(n)]
        for s in socks:
            s.bind(("", 0))
        return [s.getsockname()[1] for s in socks]


def _cluster_processes(head: RayHead) -> dict:
    """pid -> psutil.Process of every live process of the test's cluster (descendants of the head's `ray start`
    process, and any process whose environment carries the marker of this cluster, reparented ones included)."""
    import psutil

    found = {}
    try:
        root = psutil.Process(head.proc.pid)
        for p in [root] + root.children(recursive=True):
            found[p.pid] = p
    except psutil.NoSuchProcess:
        pass
    for p in psutil.process_iter():
        if p.pid in found or p.pid == os.getpid():
            continue
        try:
            if p.environ().get(MARKER) == str(head.temp_dir):
                found[p.pid] = p
        except (psutil.Error, OSError):
            continue
    return found


def _alive(procs) -> list:
    import psutil

    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def _stop(head: RayHead) -> list[str]:
    """Stop the test's cluster; returns the processes that survived (none, or the teardown fails)."""
    import psutil

    procs = _cluster_processes(head)
    if head.proc.poll() is None:
        head.proc.send_signal(signal.SIGTERM)  # `ray start --block`: drain, then stop every process it started
        try:
            head.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.proc.kill()
            head.proc.wait()
    psutil.wait_procs(_alive(procs.values()), timeout=10)
    left = _alive({**procs, **_cluster_processes(head)}.values())
    for p in left:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(left, timeout=10)
    survivors = []
    for p in _alive(left):
        try:
            survivors.append(f"{p.pid} {' '.join(p.cmdline())[:200]}")
        except psutil.Error:
            survivors.append(str(p.pid))
    return survivors


# the variables that would point a Ray client at another cluster or another token than the test's
FOREIGN_RAY_VARS = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN")


@pytest.fixture
def ray_head():
    # a short temp dir: Ray puts unix sockets under <temp dir>/session_<date>_<pid>/sockets (path limit 107 bytes)
    temp_dir = Path(tempfile.mkdtemp(prefix="rj", dir="/tmp"))
    token = secrets.token_hex(32)
    (temp_dir / "auth_token").write_text(token)
    gcs_port, dashboard_port, client_port, agent_port = _free_ports(4)
    env = {k: v for k, v in os.environ.items() if k not in FOREIGN_RAY_VARS}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if p and Path(p).resolve() != VENV_BIN.resolve())  # see the module docstring
    env.update({MARKER: str(temp_dir), "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token",
                "RAY_AUTH_TOKEN_PATH": str(temp_dir / "auth_token")})
    cmd = [str(VENV_BIN / "ray"), "start", "--head", "--block", f"--port={gcs_port}",
           f"--dashboard-port={dashboard_port}", "--include-dashboard=true",
           f"--ray-client-server-port={client_port}", f"--dashboard-agent-listen-port={agent_port}",
           "--num-cpus=2", "--num-gpus=0", "--disable-usage-stats", f"--temp-dir={temp_dir}"]
    with open(temp_dir / "ray_start.log", "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    head = RayHead(proc, temp_dir, token, gcs_port, dashboard_port)
    left: list[str] = []
    try:
        deadline = time.time() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"`ray start --head` exited with {proc.returncode}:\n{head.logs()}")
            try:
                head.get("/api/version")
                head.get("/api/jobs/")
                break
            except (urllib.error.URLError, OSError, ValueError):
                if time.time() > deadline:
                    pytest.fail(f"the Ray dashboard did not answer on {head.dashboard} within 90 s:\n{head.logs()}")
                time.sleep(0.5)
        yield head
    finally:
        left = _stop(head)
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert not left, f"Ray processes of the test's cluster survived its teardown: {left}"


# ---- data and model ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_p3(tmp_path_factory) -> dict:
    """The tiny Qwen2.5-VL (visual entropy reads the vision tower only: no warm-up needed) and the synthetic data of
    test_recipes.py as a local copy of hiyouga/geometry3k (data/<split>-00000-of-00001.parquet with the released
    columns images / problem / answer), which the recipe's prepare_data.py reads like the real release."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from verl_difficulty.data.synthetic import write_dataset
    from verl_difficulty.models.tiny import build_tiny_model_dir

    root = tmp_path_factory.mktemp("ray_job_tiny")
    write_dataset(str(root / "synthetic"), n_train=N_TRAIN, n_val=N_VAL, seed=0)
    release = root / "geometry3k"
    (release / "data").mkdir(parents=True)
    for split, name in (("train", "train"), ("val", "test")):  # prepare_data.py writes the test split as val
        rows = pq.read_table(root / "synthetic" / f"{split}.parquet").to_pylist()
        table = pa.table({
            "images": [[{"bytes": im["bytes"], "path": None} for im in r["images"]] for r in rows],
            "problem": ["<image>" + r["extra_info"]["question"] for r in rows],
            "answer": [r["reward_model"]["ground_truth"] for r in rows],
        })
        pq.write_table(table, release / "data" / f"{name}-00000-of-00001.parquet")
    return {"source": release, "model": build_tiny_model_dir(str(root / "tiny_boxed"), seed=0)}


# ---- the test ------------------------------------------------------------------------------------------------------

def test_ray_job_runs_prepare_and_score_on_the_existing_cluster(ray_head: RayHead, tiny_p3, tmp_path):
    import pyarrow.parquet as pq

    work = tmp_path / "work"
    env = {k: v for k, v in os.environ.items() if k not in FOREIGN_RAY_VARS}
    env.update(ray_head.client_env)
    env.update(
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",  # this venv's `ray` for the submission
        RAY_DASHBOARD=ray_head.dashboard,
        PYTHON=sys.executable,
        VERL_PLATFORM="cpu",
        MODEL_PATH=str(tiny_p3["model"]),
        SOURCE=str(tiny_p3["source"]),
        WORK=str(work),
        STAGES="prepare score",
        SCORE_WORKERS="1",  # one Ray scoring worker (0 would score inside the job's driver, without Ray)
        SCORE_GPUS_PER_WORKER="",  # set but empty: CPU workers
        SCORE_ARGS="--device cpu --no-progress",
    )
    start = time.time()
    proc = subprocess.run(["bash", str(RECIPE_DIR / "ray_job.sh")], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    wall = time.time() - start
    out = proc.stdout + proc.stderr
    (tmp_path / "ray_job.log").write_text(out)
    assert proc.returncode == 0, f"ray_job.sh failed (rc={proc.returncode}):\n{out[-8000:]}"

    # the job ran on the test's cluster: its one job, submitted and finished there
    m = re.search(r"Job '(raysubmit_\w+)' succeeded", out)
    assert m, f"no 'Job ... succeeded' in the submission output:\n{out[-4000:]}"
    jobs = ray_head.get("/api/jobs/")
    assert [j["submission_id"] for j in jobs] == [m.group(1)], jobs
    job = jobs[0]
    assert job["status"] == "SUCCEEDED" and job["entrypoint"] == "bash run_qwen2_5_vl_7b.sh", job
    env_vars = job["runtime_env"]["env_vars"]
    assert env_vars["PYTHON"] == sys.executable and env_vars["STAGES"] == "prepare score", env_vars
    assert env_vars["WORK"] == str(work) and env_vars["SCORE_WORKERS"] == "1", env_vars

    # the launcher checked the verl pin here and again inside the job
    assert out.count(f"recipe {RECIPE}: verl") == 2, out[-4000:]
    # the scoring attached to this cluster (RAY_ADDRESS of the job) and ran its worker as an actor there
    address = rf"[\w.-]+:{ray_head.gcs_port}\b"  # the node's IP and the head's GCS port
    assert re.search(rf"^connecting to the Ray cluster at {address}", out, re.M), out[-4000:]
    assert re.search(rf"Connecting to existing Ray cluster at address: {address}", out), out[-4000:]
    assert "Started a local Ray instance" not in out
    assert "starting 1 scoring worker(s)" in out and "(_RayScoringWorker pid=" in out, out[-4000:]
    assert f"scored {N_TRAIN}/{N_TRAIN} rows" in out, out[-4000:]

    # the outputs, on disk
    train = pq.read_table(work / "data" / "train.parquet").to_pylist()
    assert len(train) == N_TRAIN and {r["data_source"] for r in train} == {"hiyouga/geometry3k"}
    assert pq.read_table(work / "data" / "val.parquet").num_rows == N_VAL
    scored = pq.read_table(work / "scores" / "scored.parquet")
    assert scored.num_rows == N_TRAIN and "visual_entropy" in scored.column_names
    rows = scored.to_pylist()
    assert all(isinstance(r["visual_entropy"], float) and math.isfinite(r["visual_entropy"]) for r in rows)
    assert all(r["extra_info"]["visual_entropy"] == r["visual_entropy"] for r in rows)
    assert sorted(r["extra_info"]["index"] for r in rows) == sorted(r["extra_info"]["index"] for r in train)
    summary = json.loads((work / "scores" / "summary.json").read_text())
    assert summary["workers"] == 1 and summary["rows_scored"] == N_TRAIN, summary  # 1 Ray worker, not in-process
    print(f"[ray_job] {RECIPE} prepare+score as Ray job {m.group(1)}: {wall:.1f}s")
