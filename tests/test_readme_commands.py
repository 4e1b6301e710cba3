"""Every command README.md shows in its fenced bash blocks runs (issue 17: documentation must not
drift from the CLIs again).

The test reads README.md when it runs, so a command added to any section (a ``python -m
drivegen.preview``, a ``python -m drivegen.evaluate``) is picked up and run. Each command runs in
a subprocess, in one scratch working folder, in README order (so ``make train`` leaves the
checkpoint that the generation commands read), exactly as written; the test only

- appends size overrides for its module (``SIZES``: Hydra keeps the last value of a key), so
  training and generation finish in seconds on a CPU;
- runs ``make train`` as the Makefile's own recipe for it (``.venv/bin/python -m drivegen.train``),
  without make's install step;
- makes the files a command names as placeholders (``in.mp4``, ``a.yaml``, ``/clean``: ``FILES``;
  an absolute placeholder path becomes a folder of the same name in the scratch folder);
- expands README's ``[--option value]`` notation: once without the optional parts, once with all
  of them but those ``OPTIONAL_SKIPPED`` names with its reason;
- replaces README's ``<name>`` placeholders with a real value (``TEXT``);
- joins a Ray cluster where a command says ``ray.address=auto``: a 2-CPU local cluster started by
  the test (stopped at the end), named to the command through RAY_ADDRESS, which ``auto`` reads
  (with RAY_AUTH_MODE=token: Ray sends its token to an address named explicitly only when told to).

The ``chopgrad_core`` commands (``LANE``: the heads' finetune and restore, which read only the
sample logs ``make train`` writes and their own outputs) run in README order in a second lane,
started once ``make train`` has finished, beside the ``drivegen`` commands, whose Ray starts and
job waits leave the CPUs idle for long stretches. Every command still runs, exactly as before.

``NOT_RUN`` lists the commands that cannot run here, each with its reason; keep it short. A new
command that needs a placeholder or a size override the test does not know fails with a message
saying which table to extend.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"

# Commands that cannot run here, with the reason.
NOT_RUN = {
    "make test": "the test suite itself (this test is part of it)",
    ".venv/bin/python -m drivegen.preview source=/data/nuscenes log=scene-0061 frame=20 num_frames=40":
        "names a scene of the real nuScenes (v1.0-mini scene-0061); the sample dataroot holds scene-drivegen-0001 "
        "only (the same command on it runs as the sample-log preview above)",
    # README "Training on GPUs": a CUDA machine's install and multi-GPU runs on real weights and data
    # (the CPU path of the same loop is tests/train/test_parallel*.py and the Ray Train command here).
    "python3 -m venv .venv && .venv/bin/pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cu130":
        "installs a CUDA torch from PyTorch's index: a GPU machine's install, not this CPU venv's",
    "make install": "the install itself (the test runs in the installed venv)",
    "torchrun --nproc_per_node=8 -m drivegen.train model=wan2.1_vace_1.3b trainer=gpu "
    "model.pretrained=/weights/Wan2.1-VACE-1.3B-diffusers data.batch_size=4 trainer.context_parallel=2":
        "8 GPUs and the released Wan 2.1 VACE 1.3B weights",
    "python -m drivegen.preprocess input_root=/data/nuscenes out=/data/stores/nuscenes_480x832_121.zarr "
    "conditions.image_size=[480,832] clip.length=121 clip.stride=60 ray.address=auto":
        "the real nuScenes (121-frame clips; the sample logs hold 43 frames)",
    "torchrun --nproc_per_node=8 -m drivegen.train model=wan2.1_vace_1.3b trainer=gpu chopgrad=low_memory "
    "model.pretrained=/weights/Wan2.1-VACE-1.3B-diffusers data.store=/data/stores/nuscenes_480x832_121.zarr "
    "data.image_size=[480,832] data.clip_length=121 data.datasets=[nuscenes] data.batch_size=4 "
    "trainer.context_parallel=2 trainer.out=/checkpoints/run1":
        "8 GPUs, the released weights and a store of the real nuScenes",
}

# Overrides appended per module: small sizes only, never a change of what the command does.
SIZES = {
    "drivegen.train": ["trainer.steps=2", "data.image_size=[32,48]", "trainer.sample_steps=2"],
    "drivegen.generate": ["sampler.steps=2"],
    "drivegen.preprocess": ["clip.length=2", "clip.stride=12", "conditions.image_size=[32,48]", "conditions.bev=false"],
    "chopgrad_core.heads.finetune": ["train.steps=2", "train.batch_size=1", "data.crop=[32,48]", "data.eval_clips=1"],
    "chopgrad_core.heads.restore": [],
    "conditions.preview": [],
    "drivegen.preview": ["image_size=[48,80]"],
    "drivegen.evaluate": ["sampler.steps=2", "probe.steps=5", "max_clips=1"],  # one clip: no Ray startup
    "drivegen.evaluate.probe": ["probe.steps=5"],
}

# README's <name> placeholders and the value each stands for here.
TEXT = {
    "<log>": "scene-drivegen-0001",  # the sample world's nuScenes log
}

# Optional parts of a command ([--opt value]) left out of the run with all options, and why.
OPTIONAL_SKIPPED = {
    "--mask m.png": "for inpainting heads only; outputs/finetune/ holds the head of the last finetune command "
                    "(task=enhance)",
}

MAKE_TARGETS = {"make train": "train"}  # run as the Makefile's recipe for the target

# Commands of these modules run in the second lane, after `make train` (see the module docstring).
LANE = ("chopgrad_core.",)
LANE_AFTER = "make train"


def _run(full: str, cwd: Path, env: dict, timeout: float = 300) -> tuple[int, str, float, float]:
    """Run ``bash -c full``: (exit status, stderr, CPU seconds of it and its children, wall seconds).
    The CPU seconds are this command's own (os.wait4), also while another lane runs beside it."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(["bash", "-c", full], cwd=cwd, env=env, stdout=out, stderr=err)
        timer = threading.Timer(timeout, proc.kill)  # a hung command fails (killed: exit -9) instead of hanging
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        err.seek(0)
        return proc.returncode, err.read().decode(errors="replace"), usage.ru_utime + usage.ru_stime, wall


def _clip_store(path: Path) -> None:
    """The store `python -m drivegen.preprocess` writes by default (README: other entry points),
    at a small image size; its input, datasets/sample, is there after `make train`."""
    sizes = ["conditions.image_size=[32,48]", "conditions.bev_size_px=[32,32]", "progress=false"]
    subprocess.run([sys.executable, "-m", "drivegen.preprocess", f"out={path}", *sizes], cwd=path.parents[1],
                   check=True, capture_output=True, timeout=300)


def _video(path: Path, frames: int = 9, size=(48, 64), seed: int = 0) -> None:
    from chopgrad_core.video import write_mp4

    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (1, *size, 3))
    drift = np.arange(frames)[:, None, None, None] * 3
    write_mp4(path, ((base + drift) % 255).astype(np.uint8), fps=12)


def _video_folder(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    for i in range(3):
        _video(path / f"clip{i}.mp4", seed=i)


def _scenario(name: str):
    def make(path: Path) -> None:
        text = (REPO / "drivegen/generate/scenarios/sample_edit.yaml").read_text()
        path.write_text(text.replace("name: sample_edit", f"name: {name}"))
    return make


def _mask(path: Path) -> None:
    from chopgrad_core.atomic import write_png

    mask = np.zeros((48, 64), np.uint8)
    mask[10:30, 20:40] = 255
    write_png(path, mask)


# Placeholder files and folders, made in the scratch folder before the command that names them.
FILES = {
    "in.mp4": _video,
    "m.png": _mask,
    "a.yaml": _scenario("a"),
    "b.yaml": _scenario("b"),
    "/clean": _video_folder,
    "/renders": _video_folder,
    "datasets/clips.zarr": _clip_store,
}


def readme_commands(text: str) -> list[str]:
    """The commands of README's ```bash blocks, in order, without comments; repeats dropped."""
    commands: list[str] = []
    for block in re.findall(r"```(?:bash|sh|shell|console)\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip().removeprefix("$ ")
            command = line.split(" #")[0].strip() if not line.startswith("#") else ""
            if command and command not in commands:
                commands.append(command)
    return commands


def _make_recipe(target: str) -> str:
    """The command line of a Makefile target's recipe (make's variables filled in)."""
    text = (REPO / "Makefile").read_text()
    recipe = re.search(rf"^{target}:.*\n\t(.+)$", text, flags=re.M).group(1)
    return recipe.replace("$(BIN)", ".venv/bin")


def _variants(command: str) -> list[tuple[str, str]]:
    """(label, command) pairs: the command without its [optional] parts, and with all of them
    but the skipped ones."""
    optional = re.findall(r"\[([^\[\]]*--[^\[\]]*)\]", command)
    if not optional:
        return [(command, command)]
    bare = re.sub(r"\s*\[[^\[\]]*--[^\[\]]*\]", "", command)
    full = command
    for part in optional:
        full = full.replace(f"[{part}]", "" if part in OPTIONAL_SKIPPED else part)
    return [(bare, bare), (f"{command} (all options but {sorted(set(optional) & set(OPTIONAL_SKIPPED))})",
                           re.sub(r"\s+", " ", full))]


def _module(command: str) -> str | None:
    m = re.search(r"python3?\s+-m\s+([\w.]+)", command)
    return m.group(1) if m else None


@pytest.fixture(scope="module")
def ray_address():
    """A 2-CPU local Ray cluster for commands with ray.address=auto: the environment that joins it."""
    started = []

    def address() -> str:
        if not started:
            import ray

            if ray.is_initialized():
                ray.shutdown()
            ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
            env = {"RAY_ADDRESS": ray.get_runtime_context().gcs_address}
            if os.environ.get("RAY_AUTH_MODE"):  # set by ray.init when the cluster uses token auth
                env["RAY_AUTH_MODE"] = os.environ["RAY_AUTH_MODE"]
            started.append(env)
        return started[0]

    yield address
    if started:
        import ray

        ray.shutdown()


def test_readme_parses_into_known_commands():
    """The parser finds README's commands (a README without them would make the test below vacuous)."""
    commands = readme_commands(README.read_text())
    assert any("drivegen.generate" in c for c in commands) and any(c.startswith("make train") for c in commands)


def test_every_readme_command_runs(tmp_path, ray_address):
    work = tmp_path / "work"
    work.mkdir()
    (work / ".venv").symlink_to(REPO / ".venv")  # `.venv/bin/python` as written, from the scratch folder
    env = dict(os.environ, PATH=f"{REPO / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
               HYDRA_FULL_ERROR="1", MPLBACKEND="Agg")
    env.pop("RAY_ADDRESS", None)
    ran, failures = [], []
    main, lane = [], []
    for command in readme_commands(README.read_text()):
        if command not in NOT_RUN:
            (lane if (_module(command) or "").startswith(LANE) else main).append(command)

    def run_command(command: str) -> None:
        line = _make_recipe(MAKE_TARGETS[command]) if command in MAKE_TARGETS else command
        for placeholder, value in TEXT.items():
            line = line.replace(placeholder, value)
        unknown = re.search(r"<[\w-]+>", line)
        if unknown:
            failures.append(f"{command!r}: placeholder {unknown.group(0)} unknown; add it to TEXT")
            return
        if not line.startswith((".venv/bin/python -m", "python -m", "python3 -m")):
            failures.append(f"{command!r}: not a `python -m` command; add it to NOT_RUN with the reason")
            return
        module = _module(line)
        if module not in SIZES:
            failures.append(f"{command!r}: no size overrides known for {module}; add an entry to SIZES")
            return
        # Placeholders: files it names that the test makes (absolute ones inside the scratch folder).
        values = [v for token in shlex.split(line) for v in re.split(r"[\[\],]", token.split("=", 1)[-1]) if v]
        for value in values:
            if value in FILES:
                target = work / value.lstrip("/")
                if not target.exists():
                    FILES[value](target)  # after the commands before it: a store needs make train's logs
                if value.startswith("/"):
                    line = line.replace(f"={value}", f"={target}")
            elif value.startswith("/") and not value.startswith(str(tmp_path)):
                failures.append(f"{command!r}: placeholder path {value} unknown; add it to FILES")
        run_env = dict(env)
        if "ray.address=auto" in line:
            run_env.update(ray_address())
        for label, variant in _variants(line):
            full = f"{variant} {' '.join(shlex.quote(o) for o in SIZES[module])}"
            returncode, stderr, cpu, wall = _run(full, work, run_env)
            ran.append(label)
            # CPU seconds say what a command costs on a quiet machine; wall seconds depend on the load.
            print(f"{cpu:7.1f} s CPU {wall:7.1f} s wall  {label}")
            if returncode != 0:
                failures.append(f"{label!r} (ran: {full}) exited {returncode}:\n{stderr[-3000:]}")

    def run_lane() -> None:
        try:
            for command in lane:
                run_command(command)
        except BaseException as exc:  # noqa: BLE001 (reported as a failure of the test)
            failures.append(f"second lane stopped: {exc!r}")

    second = threading.Thread(target=run_lane)
    try:
        for command in main:
            run_command(command)
            if command == LANE_AFTER:
                second.start()
        if lane and second.ident is None:
            second.start()  # README without `make train`: the lane runs after the others
    finally:
        if second.ident is not None:
            second.join()
    assert not failures, "\n\n".join(failures)
    assert ran, "README.md shows no runnable command"
