"""A real Ray cluster on this machine (issue 14): ``ray start --head`` plus two worker nodes started with
``ray start --address=...``, each a process tree of its own. ``python -m drivegen.preprocess`` and
``python -m drivegen.generate`` are submitted with ``ray job submit``; a worker node is killed while
one of its actors is half way through writing a clip. Preprocessing loses nothing (every clip, byte
for byte those of the session's embedded-Ray store; the killed writer's leftovers gone) and
generation, submitted once the cluster has noticed the loss, completes on the remaining nodes.

The cluster: a head and two worker nodes of one CPU each. A stage starts two actors of one CPU each,
so at least one ClipWorker lands on a worker node, and once that node is lost the two other CPUs
still hold both (``ray.max_restarts`` restarts the dead one on the spare node). The kill is
deterministic: the test waits until a ClipWorker on a worker node is inside a clip write (its
``_partial/`` folder holds the clip's group, not yet renamed into ``clips/``), stops it there with
SIGSTOP, then SIGKILLs every process of its node (``ray start``, raylet, agents, workers), as a
machine that vanishes.

Ray notices a lost node through health checks (here after ~8 s: 8 missed checks 1 s apart; Ray's
default is ~15 s), while the driver's calls to the dead actor fail with ActorUnavailableError
within ~5 s and use up ``ray.max_task_retries``. Before drivegen.workpool.unavailable, that failed
the log being written (its other clips dropped) and the job still exited 0; the ordering here (the
retries run out before the node is declared dead) is what a real cluster sees, so this test fails
without that fix.

Isolation from other Ray instances on the machine (other tests' embedded Ray, a developer's
cluster): free ports of its own, a temp dir of its own (short, under /tmp: Ray's unix sockets live
in it, and a socket path may not exceed 107 bytes, which pytest's tmp_path would), token
authentication with a token of its own (RAY_AUTH_MODE=token, RAY_AUTH_TOKEN: drivegen.workpool
joins such a cluster), Ray's memory monitor off (it kills workers when the *machine* is short of
memory, whoever uses it), and a teardown that kills exactly the process sessions this module
started, also on failure. Never ``ray stop``: it kills every Ray process on the machine.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from drivegen.data import store

RAY = str(Path(sys.executable).with_name("ray"))
WORKERS = ("w1", "w2")  # the worker nodes; the head is "head"
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Node:
    """One ``ray start --block`` process and everything it started: they share its session (a job's
    driver gets a session of its own, as a child of a worker of the head: found as a descendant)."""

    def __init__(self, name: str, popen: subprocess.Popen, log: Path) -> None:
        self.name, self.popen, self.log = name, popen, log
        self.killed = False

    def processes(self) -> list[psutil.Process]:
        procs, children, found = {}, {}, set()
        for proc in psutil.process_iter(["ppid"]):
            procs[proc.pid] = proc
            children.setdefault(proc.info["ppid"], []).append(proc.pid)
            with contextlib.suppress(OSError):  # gone meanwhile
                if os.getsid(proc.pid) == self.popen.pid:
                    found.add(proc.pid)
        todo = list(found)
        while todo:  # and their descendants
            for child in children.get(todo.pop(), []):
                if child not in found:
                    found.add(child)
                    todo.append(child)
        return [procs[pid] for pid in found]

    def find(self, title: str) -> psutil.Process | None:
        """A process of this node whose title (Ray sets ``ray::<Actor>.<method>``) starts with ``title``."""
        for proc in self.processes():
            with contextlib.suppress(psutil.Error):
                if " ".join(proc.cmdline()).startswith(title):
                    return proc
        return None

    def kill(self) -> None:
        """Kill every process of the node, as a machine that vanishes: all are stopped (SIGSTOP) before
        any is killed, so that none sees another die and reacts (a raylet whose agent dies shuts down
        cleanly and tells the head at once; a lost machine tells nobody)."""
        self.killed = True
        procs = self.processes()
        for signal in ("suspend", "kill"):
            for proc in procs:
                with contextlib.suppress(psutil.Error):
                    getattr(proc, signal)()
        psutil.wait_procs(procs, timeout=10)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=5)


class Job:
    """``ray job submit --no-wait -- <entrypoint>`` (started, not waited for), then followed through
    the job server's REST API (what ``ray job status`` and ``ray job logs`` read)."""

    def __init__(self, cluster: "Cluster", name: str, entrypoint: list[str]) -> None:
        self.cluster, self.id = cluster, f"{name}-{secrets.token_hex(4)}"
        self.submit = subprocess.Popen(
            [RAY, "job", "submit", f"--address={cluster.dashboard}", f"--submission-id={self.id}", "--no-wait", "--",
             *entrypoint], env=cluster.env, cwd=cluster.root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        cluster.submits.append(self.submit)

    def status(self) -> str:
        if self.submit.returncode is None:
            output = self.submit.communicate(timeout=120)[0]
            assert self.submit.returncode == 0, f"ray job submit failed:\n{output[-4000:]}"
        return self.cluster.get(f"/api/jobs/{self.id}")["status"]

    def logs(self, tail: int = 8000) -> str:
        return self.cluster.get(f"/api/jobs/{self.id}/logs")["logs"][-tail:]

    def wait(self, timeout: float = 300) -> None:
        """Until the job ends; fails the test, with the job's log, unless it SUCCEEDED."""
        deadline = time.monotonic() + timeout
        while (status := self.status()) not in TERMINAL:
            if time.monotonic() > deadline:
                pytest.fail(f"job {self.id} still {status} after {timeout:.0f} s:\n{self.logs()}")
            time.sleep(0.25)
        assert status == "SUCCEEDED", f"job {self.id} {status}:\n{self.logs()}"


class Cluster:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.token = secrets.token_hex(32)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        self.env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token, RAY_USAGE_STATS_ENABLED="0",
                        RAY_health_check_period_ms="1000", RAY_health_check_failure_threshold="8",
                        RAY_memory_monitor_refresh_ms="0")
        self.gcs = f"127.0.0.1:{_free_port()}"
        self.dashboard = f"http://127.0.0.1:{_free_port()}"
        self.nodes: dict[str, Node] = {}
        self.submits: list[subprocess.Popen] = []

    def start(self, name: str, *args: str) -> None:
        log = self.root / f"{name}.log"
        with open(log, "w") as out:
            popen = subprocess.Popen(
                [RAY, "start", "--block", f"--temp-dir={self.root / name}", "--num-cpus=1", "--disable-usage-stats",
                 "--min-worker-port=0", "--max-worker-port=0", f"--dashboard-agent-listen-port={_free_port()}", *args],
                env=self.env, cwd=self.root, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.nodes[name] = Node(name, popen, log)

    def start_all(self) -> None:
        port = self.gcs.split(":")[1]
        self.start("head", "--head", f"--port={port}", f"--dashboard-port={self.dashboard.rsplit(':', 1)[1]}",
                   "--dashboard-host=127.0.0.1", f"--ray-client-server-port={_free_port()}")
        for name in WORKERS:  # each with a resource named after it, to tell the nodes apart in the state API
            self.start(name, f"--address={self.gcs}", f'--resources={{"{name}": 1}}')
        self.until(lambda: sum(n["state"] == "ALIVE" for n in self.state("nodes")) == 3, 120, "three alive nodes")

    def until(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for node in self.nodes.values():
                assert node.killed or node.popen.poll() is None, f"node {node.name} exited:\n{node.log.read_text()[-4000:]}"
            with contextlib.suppress(OSError, ValueError, KeyError):
                if ready():
                    return
            time.sleep(0.3)
        pytest.fail(f"timed out waiting for {what}")

    def get(self, path: str):
        request = urllib.request.Request(self.dashboard + path, headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def state(self, kind: str, **filters: str) -> list[dict]:
        """Rows of Ray's state API (``ray list <kind> --detail``), e.g. state("actors", class_name="X")."""
        query = "".join(f"&filter_keys={k}&filter_predicates=%3D&filter_values={v}" for k, v in filters.items())
        return self.get(f"/api/v0/{kind}?detail=1&limit=1000{query}")["data"]["result"]["result"]

    def teardown(self) -> None:
        for submit in self.submits:
            if submit.poll() is None:
                submit.kill()
        for name in [*WORKERS, "head"]:
            if name in self.nodes:
                self.nodes[name].kill()
        # Anything still naming the temp dir (nothing, unless a process left its session).
        stray = []
        for proc in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                if str(self.root) in " ".join(proc.cmdline()):
                    stray.append(proc)
                    proc.kill()
        psutil.wait_procs(stray, timeout=10)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster():
    cluster = Cluster(Path(tempfile.mkdtemp(prefix="dg-ray-", dir="/tmp")))
    try:
        cluster.start_all()
        yield cluster
    finally:
        cluster.teardown()


def _stop_mid_clip(cluster: Cluster, job: Job, out: Path, timeout: float = 240) -> tuple[str, str, str]:
    """Wait until a ClipWorker on a worker node is inside a clip write and stop it there (SIGSTOP).
    Returns (node, clip, partial folder). A write owns ``_partial/<clip>.<host>.<pid>.<id>/`` and
    builds the clip's group inside it before renaming it into ``clips/`` (drivegen.data.store)."""
    partial = out / "_partial"
    deadline = time.monotonic() + timeout
    target: tuple[str, psutil.Process] | None = None
    checked = 0.0
    while time.monotonic() < deadline:
        if time.monotonic() - checked > 0.5:
            checked = time.monotonic()
            assert job.status() not in TERMINAL, f"the job ended before a worker node's actor was seen writing:\n{job.logs()}"
        if target is None:
            target = next(((n, p) for n in WORKERS if (p := cluster.nodes[n].find("ray::ClipWorker"))), None)
            time.sleep(0.3)  # the actors are starting: look again in a while
        else:
            node, proc = target
            with contextlib.suppress(FileNotFoundError):
                for slot in os.listdir(partial):
                    if slot.rsplit(".", 2)[-2] != str(proc.pid):
                        continue
                    proc.suspend()
                    with contextlib.suppress(FileNotFoundError):
                        clips = [c for c in os.listdir(partial / slot) if not store.has_clip(out, c)]
                        if clips:
                            return node, clips[0], slot
                    proc.resume()  # the write had just finished: catch the next one
        time.sleep(0.01)
    pytest.fail(f"no ClipWorker on {WORKERS} was seen writing a clip within {timeout:.0f} s:\n{job.logs()}")


def test_jobs_complete_on_a_cluster_that_loses_a_worker_node(cluster, sample_logs, train_data, trained, run_folder,
                                                            tmp_path):
    # 1. Preprocessing, with the settings of the session's store (train_data: written by an embedded
    # Ray) to compare with it byte for byte. A worker node dies in the middle of a clip.
    out = tmp_path / "clips.zarr"
    h, w = train_data.image_size
    preprocess = Job(cluster, "preprocess", [
        sys.executable, "-m", "drivegen.preprocess", f"input_root={sample_logs}", f"out={out}",
        f"conditions.image_size=[{h},{w}]", "conditions.bev=false", f"clip.length={train_data.clip_length}",
        f"clip.stride={train_data.clip_length}", f"split.val_logs=[{','.join(train_data.val_logs)}]",
        "ray.num_workers=2", "progress=false"])
    node, clip, slot = _stop_mid_clip(cluster, preprocess, out)
    cluster.nodes[node].kill()
    assert (out / "_partial" / slot / clip).is_dir()  # the clip its writer left half written
    cluster.until(lambda: [n["state"] for n in cluster.state("nodes") if node in n["resources_total"]] == ["DEAD"],
                  60, f"Ray to declare node {node} dead")

    # 2. Generation, submitted to the cluster that lost the node: the shipped scenario and a 5-frame
    # copy of it. Only now: the restarted ClipWorker has taken the spare CPU, and generation's actors
    # wait until preprocessing ends. Had they taken it first, each job would hold a CPU while
    # waiting for an actor that no CPU is left for.
    from drivegen.generate.pipeline import resolve_scenario_file

    shipped = resolve_scenario_file("sample_edit.yaml")
    second = tmp_path / "cluster_edit.yaml"
    second.write_text(shipped.read_text().replace("name: sample_edit", "name: cluster_edit")
                      .replace("frames: 13", "frames: 5"))
    generated = tmp_path / "generate"
    generate = Job(cluster, "generate", [
        sys.executable, "-m", "drivegen.generate", f"checkpoint={run_folder}",
        f"scenarios=['sample_edit.yaml','{second}']", f"out={generated}", "mode=ray", "ray.num_workers=2",
        "sampler.steps=2", "progress=false"])

    # 3. Preprocessing completed and lost nothing.
    preprocess.wait()
    reference = Path(train_data.store)
    clips = store.completed_clips(out)
    assert clip in clips and clips == store.completed_clips(reference), \
        (sorted(clips ^ store.completed_clips(reference)), preprocess.logs())
    assert store.verify_store(out)["broken"] == {}
    assert os.listdir(out / "_partial") == []  # the killed writer's folder was removed
    for c in sorted(clips):  # every array file as the embedded run wrote it (the attrs hold paths)
        mine, theirs = ({f: v for f, v in store.read_manifest(s, c)["files"].items() if not f.endswith("zarr.json")}
                        for s in (out, reference))
        assert mine == theirs, c
    report = json.loads((out / "report.json").read_text())
    assert report["totals"]["logs_failed"] == 0 and report["totals"]["clips_in_store"] == len(clips), report["totals"]
    # The job's two actors ran on the cluster; the one on the lost node was restarted once.
    workers = cluster.state("actors", class_name="ClipWorker")
    assert sorted(int(a["num_restarts"]) for a in workers) == [0, 1], workers

    # 4. Generation completed on the cluster: videos, mosaic and nuScenes labels of both scenarios.
    generate.wait()
    report = json.loads((generated / "report.json").read_text())
    assert report["mode"] == "ray" and report["totals"] == {"generated": 2, "skipped": 0, "failed": 0}, report
    assert len(cluster.state("actors", class_name="GenerateWorker")) == 2
    import imageio.v2 as imageio
    from nuscenes.nuscenes import NuScenes

    for name, frames in (("sample_edit", 13), ("cluster_edit", 5)):
        folder = generated / name
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["frames"] == frames and manifest["edited_agents"] == ["cut_in_car"], manifest
        for camera in manifest["cameras"]:
            video = imageio.mimread(folder / f"{camera}.mp4")
            assert len(video) == frames and video[0].shape == (*manifest["image_size"], 3), camera
        assert len(imageio.mimread(folder / "mosaic.mp4")) == frames
        with contextlib.redirect_stdout(io.StringIO()):
            nusc = NuScenes(version="v1.0-drivegen-generated", dataroot=str(folder / "nuscenes"), verbose=False)
        assert len(nusc.sample) == frames and len(nusc.sample_data) == frames * len(manifest["cameras"])
        assert max(i["nbr_annotations"] for i in nusc.instance) == frames  # the inserted car, on every frame
