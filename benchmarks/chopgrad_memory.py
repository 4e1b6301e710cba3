"""Peak memory, time and gradient fidelity of ChopGrad pixel losses: frames x mode x window x cameras.

Named scenarios (``--scenario``):

- ``cpu-small``: a small Wan 2.1 VAE on the CPU; peak RSS per case in a fresh subprocess.
- ``h100-anchor``: the full-size Wan 2.1 VAE (default config, 127 M parameters, random weights),
  bf16, 480x832, L1 on every frame, gradient to the latents. Peak is
  ``torch.cuda.max_memory_allocated`` above what was allocated before the call (model, latents
  and target), so it is the loss's own working memory.
- ``model-480p``: the ``h100-anchor`` decoder on fake tensors (no data, no compute, seconds on a CPU):
  the peak each configuration would allocate, tracked op by op (:func:`model_peak`).
- ``h100-target``: issue 2's target, the ``low_memory`` preset against naive D=0 at 17 and 121
  frames, 1 and 6 cameras; each case in a fresh process warmed up with its own settings.
- ``h100-explore``: a few lever combinations at 17 and 33 frames, one camera, to choose defaults.
- ``h200-issue15-a`` ... ``-f``: issue 15 on one H200, every case against plain D=0 in the same
  process, each timed case after an untimed call with its own settings (``--budget-s``, ``--out``);
  ``-d``: Wan 480x832 and CogVideoX 480x720, ``-e``: Wan 896x1600, ``-f``: CogVideoX 848x1600 and six
  cameras at 121 frames. ``--plot`` draws peak memory against frames from their JSON files.
- ``h200-issue15-g1``: part g's levers against their state before them (case suffix ``-before``),
  same process; ``--profile`` adds torch.profiler summaries. ``-g2``: Wan 480x832, lean forward.
  ``-g3``: Wan 896x1600 lean forward at 17 and 121 frames, CogVideoX 848x1600 at 49 frames (memory).

Cosine is the cosine similarity of the latent gradient to full backprop's, where full fits.
Writes ``benchmarks/results/chopgrad_memory_<scenario>_<device>_<date>.md`` and prints the table.

    python benchmarks/chopgrad_memory.py --scenario cpu-small
    python benchmarks/chopgrad_memory.py --scenario h100-anchor
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import chopgrad_core as cg  # noqa: E402
from chopgrad_core.config import PRESETS  # noqa: E402

GIB = 1024**3


@dataclass
class Case:
    name: str  # decode | full | naive | chopgrad configs
    frames: int
    cameras: int
    kwargs: dict = field(default_factory=dict)
    family: str = "wan"  # wan (Wan 2.1) | cogvideox
    hw: tuple[int, int] | None = None  # pixel size; None: the scenario's


@dataclass
class Row:
    case: str
    frames: int
    cameras: int
    seconds: float | None
    peak_gib: float | None
    cosine: float | None
    note: str = ""
    reserved_gib: float | None = None  # max reserved above the pre-call reserved (CUDA only)


def latent_frames(frames: int) -> int:
    assert (frames - 1) % 4 == 0, "Wan decodes T latent frames to 1 + 4(T-1) frames"
    return 1 + (frames - 1) // 4


# ---------------------------------------------------------------------------------------------


def make_vae(size: str, device: str, dtype: torch.dtype, family: str = "wan"):
    from diffusers import AutoencoderKLCogVideoX, AutoencoderKLWan

    torch.manual_seed(0)
    if family == "cogvideox":  # default config: CogVideoX's 216 M-parameter VAE (MagicDrive-V2's family)
        return AutoencoderKLCogVideoX().to(device=device, dtype=dtype).eval().requires_grad_(False)
    vae = AutoencoderKLWan() if size == "full" else AutoencoderKLWan(base_dim=16, z_dim=16, dim_mult=[1, 2, 2, 2],
                                                                    num_res_blocks=1)
    vae = vae.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return vae


def make_inputs(vae, case: Case, hw: tuple[int, int], device, dtype):
    g = torch.Generator(device="cpu").manual_seed(case.frames)
    hw = case.hw or hw
    h, w = hw[0] // 8, hw[1] // 8
    z = torch.randn(case.cameras, 16, latent_frames(case.frames), h, w, generator=g).to(device, dtype)
    target = (torch.rand(case.cameras, 3, case.frames, *hw, generator=g) * 2 - 1).to(device, dtype)
    return z, target


def loss_kwargs(kwargs: dict) -> dict:
    """``pixel_loss`` keyword arguments from a case's (JSON-able) ones: ``recompute_plan`` as a dict
    becomes a :class:`~chopgrad_core.memory.RecomputePlan` (an explicit plan instead of a budget)."""
    from chopgrad_core.memory import RecomputePlan

    if isinstance(kwargs.get("recompute_plan"), dict):
        kwargs = dict(kwargs, recompute_plan=RecomputePlan(**kwargs["recompute_plan"]))
    return kwargs


def run_case(vae, case: Case, z, target):
    """Returns (seconds, latent grad or None)."""
    if case.name == "decode":
        cg.decode(vae, z)
        return None
    zz = z.clone().requires_grad_()
    if case.name == "full":
        loss = F.l1_loss(vae.decode(zz).sample.float(), target.float())
    else:
        loss = cg.pixel_loss(vae, zz, target, **loss_kwargs(case.kwargs))
    loss.backward()
    return zz.grad.float()


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def measure_cuda(vae, case: Case, hw, dtype, reference=None) -> tuple[Row, torch.Tensor | None]:
    torch.cuda.empty_cache()
    z, target = make_inputs(vae, case, hw, "cuda", dtype)
    sync("cuda")
    base, base_reserved = torch.cuda.memory_allocated(), torch.cuda.memory_reserved()
    torch.cuda.reset_peak_memory_stats()
    try:
        t0 = time.perf_counter()
        grad = run_case(vae, case, z, target)
        sync("cuda")
        seconds = time.perf_counter() - t0
    except torch.OutOfMemoryError:
        del z, target
        torch.cuda.empty_cache()
        return Row(case.name, case.frames, case.cameras, None, None, None, "out of memory"), None
    peak = (torch.cuda.max_memory_allocated() - base) / GIB
    reserved = (torch.cuda.max_memory_reserved() - base_reserved) / GIB
    cos = None
    if grad is not None and reference is not None:
        cos = float(F.cosine_similarity(grad.flatten(), reference.to(grad.device).flatten(), dim=0))
    return Row(case.name, case.frames, case.cameras, seconds, peak, cos, reserved_gib=reserved), grad


def measure_subprocess(case: Case, hw, device: str, ref_path: Path | None, warm_own: bool = False) -> Row:
    cmd = [sys.executable, __file__, "--case", json.dumps(asdict(case)), "--hw", *map(str, hw), "--device", device]
    if ref_path is not None:
        cmd += ["--ref", str(ref_path)]
    if warm_own:
        cmd += ["--warm-own"]
    # CPU: glibc keeps freed heap pages, so peak RSS would count fragmentation; serving large
    # allocations with mmap returns freed tensors to the OS (the constant-memory test does the same).
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        return Row(case.name, case.frames, case.cameras, None, None, None, "failed: " + out.stderr.strip()[-200:])
    return Row(**json.loads(out.stdout.strip().splitlines()[-1]))


# ---------------------------------------------------------------------------------------------
# Memory model: the full-size decoder on fake tensors (no compute), live bytes tracked per op


def model_peak(case: Case, hw, explain: bool = False) -> Row:
    """Peak bytes a case would allocate, from FakeTensorMode: shapes without data, in seconds on a CPU.

    Every op's outputs are tracked by storage until freed (weak references), so the peak is what a
    caching allocator's ``max_memory_allocated`` reports, minus allocator rounding and library
    workspaces (cuDNN). Host memory for ``offload_cache`` is modelled as the meta device (not
    counted). Checked against H100 measurements in benchmarks/RESULTS.md.
    """
    import weakref

    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    from chopgrad_core import decoder as cg_decoder
    from chopgrad_core import engine

    class LiveBytes(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.live, self.refs, self.now, self.peak = {}, {}, 0, 0
            self.what, self.at_peak = {}, []  # storage -> (op, shape, dtype); the live set at the peak

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor) and t.device.type != "meta":
                    st = t.untyped_storage()
                    if id(st) not in self.live:
                        self.live[id(st)] = st.nbytes()
                        self.what[id(st)] = (str(func), tuple(t.shape), str(t.dtype).replace("torch.", ""))
                        self.now += st.nbytes()
                        if self.now > self.peak:
                            self.peak = self.now
                            if explain:
                                self.at_peak = [(n, self.what.get(k)) for k, n in self.live.items() if n]
                        self.refs[id(st)] = weakref.ref(st, lambda _, k=id(st): self._free(k))
            return out

        def _free(self, key):
            self.now -= self.live.pop(key)
            self.refs.pop(key, None)
            self.what.pop(key, None)

    class HostAsMeta(cg_decoder.CacheOffloader):
        def holds(self, key, t):
            return isinstance(t, torch.Tensor) and t.device.type == "meta"

        def store(self, key, t, ring=None):
            return torch.empty(t.shape, dtype=t.dtype, device="meta")

        def fetch(self, items):
            return [torch.empty(h.shape, dtype=h.dtype, device=self.device) for _, h in items]

        def fetch_tree(self, cache):
            return cg_decoder.CausalCache(cg_decoder.map_tensors(
                lambda t: torch.empty(t.shape, dtype=t.dtype, device=self.device), cache.state))

    vae = make_vae("full", "cpu", torch.bfloat16, case.family)
    hw = case.hw or hw
    # Input checks read tensor values (isfinite), which fake tensors do not have.
    saved = engine._check_args, engine._losses.check_mask_and_weight, engine._OFFLOADERS.copy()
    engine._check_args = engine._losses.check_mask_and_weight = lambda *a, **k: None
    engine._OFFLOADERS[torch.device("cpu")] = HostAsMeta(torch.device("cpu"))
    try:
        with FakeTensorMode(allow_non_fake_inputs=True):
            t, h, w = latent_frames(case.frames), hw[0] // 8, hw[1] // 8
            z = torch.empty(case.cameras, 16, t, h, w, dtype=torch.bfloat16).requires_grad_()
            target = torch.empty(case.cameras, 3, case.frames, *hw, dtype=torch.bfloat16)
            live = LiveBytes()
            for t in (z, target):  # allocated before the call, like the measured peaks' baseline
                live.live[id(t.untyped_storage())] = 0
            with live:
                if case.name == "decode":
                    with torch.no_grad():
                        cg.decode(vae, z.detach())
                else:
                    cg.pixel_loss(vae, z, target, **loss_kwargs(case.kwargs)).backward()
    finally:
        engine._check_args, engine._losses.check_mask_and_weight = saved[:2]
        engine._OFFLOADERS.clear()
        engine._OFFLOADERS.update(saved[2])
    if explain:  # what is alive at the peak, largest first
        print(f"{case.name} {case.frames}x{case.cameras}: peak {live.peak / GIB:.2f} GiB")
        for n, what in sorted(live.at_peak, key=lambda e: -e[0])[:25]:
            print(f"  {n / GIB:6.3f} GiB  {what}")
    return Row(case.name, case.frames, case.cameras, None, live.peak / GIB, None, "model (fake tensors)")


def case_main(case_json: str, hw, device: str, ref: str | None, warm_own: bool = False) -> None:
    case = Case(**json.loads(case_json))
    if device == "cuda":
        vae = make_vae("full", "cuda", torch.bfloat16)
        # Warm-up at 5 frames: cuDNN autotuning, the allocator and pinned host buffers. The target
        # scenario warms up with the case's own settings (strip shapes, offload buffers).
        warm = Case("naive", 5, 1, NAIVE)
        if warm_own:
            warm = Case(case.name, 5, 1 if case.kwargs.get("micro_batch") else case.cameras, case.kwargs)
        measure_cuda(vae, warm, hw, torch.bfloat16)
        reference = torch.load(ref) if ref and case.cameras == 1 and case.frames == 17 and Path(ref).exists() else None
        row, grad = measure_cuda(vae, case, hw, torch.bfloat16, reference)
        if case.name == "full" and grad is not None and ref:
            torch.save(grad.cpu(), ref)
    else:
        import psutil

        torch.set_num_threads(1)
        # Random-weight decoders drift into denormal floats, which the CPU computes ~30x slower.
        torch.set_flush_denormal(True)
        vae = make_vae("small", "cpu", torch.float32)
        z, target = make_inputs(vae, case, hw, "cpu", torch.float32)
        base = psutil.Process().memory_info().rss
        t0 = time.perf_counter()
        run_case(vae, case, z, target)
        seconds = time.perf_counter() - t0
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
        row = Row(case.name, case.frames, case.cameras, seconds, (peak - base) / GIB, None)
    print(json.dumps(asdict(row)))


# ---------------------------------------------------------------------------------------------

NAIVE = dict(mode="sliding", window=0)  # the paper's truncation, D=0, whole batch at once
FAST = dict(NAIVE, recompute=True, micro_batch=1)  # exact levers only
SMALL = dict(FAST, tile=(30, 52), tile_halo=4)  # + tiled backward (approximate gradient)
# The issue-2 target configuration: chopgrad_core.config.PRESETS["low_memory"] (exact levers only).
LOW_MEMORY = dict(NAIVE, **{k: v for k, v in asdict(PRESETS["low_memory"]).items()
                            if k in ("micro_batch", "recompute", "recompute_strips", "offload_cache")})


# Issue 15: the exact levers planned from the frame size and a memory budget (chopgrad_core.memory),
# against plain D=0 in the same process. 6 cameras: against plain D=0 one camera at a time (six
# cameras in one batch do not fit at 896x1600: 6 x 69 GiB).
def _lm(budget: float, **kw) -> dict:
    return dict(LOW_MEMORY, memory_budget_gib=budget, **kw)


P480, P896, C480, C848 = (480, 832), (896, 1600), (480, 720), (848, 1600)


def _issue15_wan(hw, budget: float, d1_plain: bool, lengths=(17, 121, 241), roomier: float | None = None) -> list[Case]:
    cases = []
    for frames in lengths:
        cases += [Case("naive", frames, 1, NAIVE, hw=hw), Case("low_memory", frames, 1, _lm(budget), hw=hw)]
        if roomier:  # a larger budget buys back time (kept levels instead of recomputed ones)
            cases.append(Case(f"low_memory-{roomier:g}GiB", frames, 1, _lm(roomier), hw=hw))
    cases += [Case("naive-mb1", 17, 6, dict(NAIVE, micro_batch=1), hw=hw),
              Case("low_memory", 17, 6, _lm(budget), hw=hw)]
    if d1_plain:
        cases += [Case("sliding-D1", 17, 1, dict(mode="sliding", window=1), hw=hw)]
    cases += [Case("low_memory-D1", 17, 1, _lm(budget, window=1), hw=hw)]
    return cases


def issue15_cases(part: str) -> list[Case]:
    if part == "a":  # Wan 480x832, CogVideoX, full backprop (the plot), each case against plain D=0
        cog = dict(NAIVE, micro_batch=1, recompute=True, offload_cache=True)
        cases = _issue15_wan(P480, 6.0, True, (17, 121), roomier=7.0) + [Case("full", 17, 1, hw=P480)]
        for hw, budget in ((C480, 8.0), (C848, 16.0)):
            for frames in (17, 49):
                if hw == C480:
                    cases.append(Case("naive", frames, 1, NAIVE, family="cogvideox", hw=hw))
                cases.append(Case("levers", frames, 1, dict(cog, memory_budget_gib=budget), family="cogvideox", hw=hw))
        # Expected out of memory last: an OOM leaves the allocator fragmented for what follows.
        return cases + [Case("naive", 17, 1, NAIVE, family="cogvideox", hw=C848), Case("full", 33, 1, hw=P480)]
    return _issue15_wan(P896, 8.0, False)  # full backprop: 254 GiB by the memory model


# Issue 15, part c: what parts a and b left unmeasured, in one process within 8 minutes on one H200
# (a 10-minute device call with the install). Expected seconds per case (with its warm-up) from
# parts a and b; the CogVideoX strip cases are estimates (about 2x plain D=0, plus pinning the host
# buffers of their saved pieces on the first call, about a second per GB).
COG = dict(NAIVE, micro_batch=1, recompute=True, offload_cache=True)
ISSUE15_C_BUDGET_S = 450.0  # 7.5 minutes of cases: the rest of the 8 is model set-up and the tables
ISSUE15_C = [  # (case, expected seconds), in the order they run: the most needed first
    (Case("naive", 17, 1, NAIVE, hw=P896), 6),
    (Case("low_memory", 17, 1, _lm(8.0), hw=P896), 14),  # first call pins the host ring
    (Case("naive", 17, 1, NAIVE, hw=P480), 3),
    (Case("low_memory", 17, 1, _lm(6.0), hw=P480), 6),
    (Case("naive", 121, 1, NAIVE, hw=P480), 8),
    (Case("low_memory", 121, 1, _lm(6.0), hw=P480), 11),
    (Case("naive", 17, 1, NAIVE, family="cogvideox", hw=C480), 5),
    (Case("strips", 17, 1, dict(COG, memory_budget_gib=8.0), family="cogvideox", hw=C480), 15),
    (Case("naive", 49, 1, NAIVE, family="cogvideox", hw=C480), 4),
    (Case("strips", 49, 1, dict(COG, memory_budget_gib=8.0), family="cogvideox", hw=C480), 8),
    (Case("strips", 17, 1, dict(COG, memory_budget_gib=16.0), family="cogvideox", hw=C848), 60),
    (Case("naive", 121, 1, NAIVE, hw=P896), 27),
    (Case("low_memory", 121, 1, _lm(8.0), hw=P896), 45),
    (Case("low_memory-D1", 17, 1, _lm(8.0, window=1), hw=P896), 15),
    (Case("strips", 49, 1, dict(COG, memory_budget_gib=16.0), family="cogvideox", hw=C848), 45),
    (Case("naive-mb1", 17, 6, dict(NAIVE, micro_batch=1), hw=P896), 23),
    (Case("low_memory", 17, 6, _lm(8.0), hw=P896), 37),
    # The second copy stream against one, same inputs: the gradients must agree to bf16 rounding.
    (Case("low_memory-1stream", 17, 1, _lm(8.0), hw=P896), 15),
    # Expected out of memory (294 GiB by the memory model) last: an OOM fragments the allocator.
    (Case("naive", 17, 1, NAIVE, family="cogvideox", hw=C848), 10),
]


def issue15_c_cases(budget_s: float = ISSUE15_C_BUDGET_S) -> list[Case]:
    """Part c's cases, the longest dropped (but never the plain D=0 a kept case is compared with)
    while the expected total exceeds ``budget_s``."""
    kept = list(ISSUE15_C)
    while sum(t for _, t in kept) > budget_s:
        longest = max((e for e in kept if not e[0].name.startswith("naive") or e[0].hw == C848),
                      key=lambda e: e[1])
        kept.remove(longest)
        base = (longest[0].family, longest[0].hw, longest[0].frames, longest[0].cameras)
        if not any((c.family, c.hw, c.frames, c.cameras) == base for c, _ in kept if not c.name.startswith("naive")):
            kept = [e for e in kept if not (e[0].name.startswith("naive")
                                            and (e[0].family, e[0].hw, e[0].frames, e[0].cameras) == base)]
        print(f"dropped {longest[0].family} {longest[0].hw} {longest[0].name} {longest[0].frames}x"
              f"{longest[0].cameras} (expected {longest[1]} s): over the {budget_s:.0f} s budget", flush=True)
    return [c for c, _ in kept]


# Issue 15, parts d-f: every case against plain D=0 in the same run, each timed case after an
# untimed call with its own settings (run_issue15). One device call (at most 9 minutes) each:
# d: Wan 480x832 (the planned low_memory with two and one copy streams, and explicit plans that keep
#    the 2x level), full backprop for the plot, CogVideoX 480x720 and 848x1600;
# e: Wan 896x1600, one camera at 17 / 121 / 241 frames and six cameras at 17;
# f: CogVideoX 848x1600 alone, then Wan 896x1600 six cameras at 121 frames.
KEEP2_DEV = dict(strips=4, keep_below=2, offload_checkpoints=False)  # memory model: 5.80 GiB at 480x832
KEEP2_OFF = dict(strips=3, keep_below=2, offload_checkpoints=True)  # memory model: 5.05 GiB at 480x832


def issue15_def_cases(part: str) -> list[Case]:
    if part == "d":
        cases = []
        for frames in (17, 121):
            cases += [Case("naive", frames, 1, NAIVE, hw=P480), Case("low_memory", frames, 1, _lm(6.0), hw=P480),
                      Case("low_memory-keep2", frames, 1, dict(LOW_MEMORY, recompute_plan=KEEP2_DEV), hw=P480),
                      Case("low_memory-keep2-offload", frames, 1, dict(LOW_MEMORY, recompute_plan=KEEP2_OFF),
                           hw=P480)]
        cases += [Case("low_memory-1stream", f, 1, _lm(6.0), hw=P480) for f in (17, 121)]
        cases += [Case("full", f, 1, dict(mode="full"), hw=P480) for f in (9, 17)]
        for frames in (17, 49):
            cases += [Case("naive", frames, 1, NAIVE, family="cogvideox", hw=C480),
                      Case("strips", frames, 1, dict(COG, memory_budget_gib=8.0), family="cogvideox", hw=C480)]
        cases += [Case("strips4", 49, 1, dict(COG, recompute_plan=dict(strips=4, offload_checkpoints=True)),
                       family="cogvideox", hw=C480)]
        cases += [Case("strips", f, 1, dict(COG, memory_budget_gib=16.0), family="cogvideox", hw=C848)
                  for f in (17, 49)]
        return cases
    if part == "e":
        cases = []
        for frames in (17, 121, 241):
            cases += [Case("naive", frames, 1, NAIVE, hw=P896), Case("low_memory", frames, 1, _lm(8.0), hw=P896)]
        return cases + [Case("naive-mb1", 17, 6, dict(NAIVE, micro_batch=1), hw=P896),
                        Case("low_memory", 17, 6, _lm(8.0), hw=P896),
                        Case("low_memory-1stream", 17, 1, _lm(8.0), hw=P896)]
    # f: CogVideoX 848x1600 in a process of its own (in part d's process it ended without a
    # traceback, after the other sizes had pinned their buffers), then six cameras at 121 frames.
    return [Case("strips", f, 1, dict(COG, memory_budget_gib=16.0), family="cogvideox", hw=C848) for f in (17, 49)] + [
        Case("naive-mb1", 121, 6, dict(NAIVE, micro_batch=1), hw=P896), Case("low_memory", 121, 6, _lm(8.0), hw=P896)]


def model_issue15_c_cases() -> list[Case]:
    """The memory model's view of the CogVideoX strips (CPU, fake tensors) at the issue's sizes."""
    cases = []
    for hw, budget in ((C480, 8.0), (C848, 16.0)):
        for frames in (17, 49):
            cases.append(Case("strips", frames, 1, dict(COG, memory_budget_gib=budget), family="cogvideox", hw=hw))
    return cases


def host_memory() -> str:
    """Pinned host memory the CUDA host allocator holds, this process's peak RSS and the machine's
    available memory, in GiB (the CogVideoX 848x1600 case of part d ended without a traceback)."""
    parts = []
    try:
        stats = torch.cuda.host_memory_stats()
        pinned = next((v for k, v in stats.items() if "allocated_bytes" in k and k.endswith("current")), None)
        if pinned is not None:
            parts.append(f"pinned {pinned / GIB:.1f}")
    except Exception:  # older torch: no host allocator statistics
        pass
    try:
        status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
        parts.append(f"rss peak {int(status['VmHWM'].split()[0]) / 2**20:.1f}")
        info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
        parts.append(f"available {int(info['MemAvailable'].split()[0]) / 2**20:.1f}")
    except (OSError, KeyError, ValueError):
        pass
    return "host GiB: " + ", ".join(parts) if parts else ""


def release_host_buffers() -> None:
    """The offloader's pinned buffers, and the pinned blocks torch's host allocator caches for reuse."""
    from chopgrad_core import engine

    engine.release_offload_buffers()
    for name in ("_host_emptyCache", "_accelerator_emptyHostCache"):
        if torch.cuda.is_available() and hasattr(torch._C, name):
            try:
                getattr(torch._C, name)()
            except RuntimeError:
                pass
            break


# Issue 15, part g: the levers of part g against their state before it, in the same process. A case
# name's suffix turns part g's levers off: "-before" all of them; "-nosplit" the CogVideoX resnets'
# two-pass backward only; "-lateprefetch" Wan's earlier fetches only. "-lean" turns on Wan's lean
# forward (on by default since part h; the benchmark sets it per case, off without the suffix); "-early"
# Wan's backward prefetch at a block's first strip
# (off by default since g1).
# "-keepslots" (a diagnostic, not a lever: more device memory) keeps Wan's fetched input slots on the
# device for backward. Part g1 ran before the lean forward existed (and with "-early" the default).
# Part h: "-convfwd" runs every convolution's forward in the recomputation (``GRAD_ONLY_LAST_CONV`` off);
# "-noahead" fetches each CogVideoX strip pass's first strip when the pass starts (``_SavedOnHost``'s
# ``across_passes`` and ``ahead_of_block`` off), "-passesonly" turns ``ahead_of_block`` alone off.
def _toggles(name: str) -> dict:
    before = name.endswith("-before")
    late = before or name.endswith("-lateprefetch")
    return dict(early_start=name.endswith("-early"), ahead_of_slotless=not late, index_on_device=not before,
                split=not (before or name.endswith("-nosplit")), save_host_copies=not name.endswith("-keepslots"),
                lean=name.endswith("-lean"), grad_only=not (before or name.endswith("-convfwd")),
                across_passes=not (before or name.endswith("-noahead")),
                ahead_of_block=not (before or name.endswith("-noahead") or name.endswith("-passesonly")))


class lever_toggles:
    """Sets part g's lever switches for one case (see :func:`_toggles`) and restores them after."""

    def __init__(self, name: str) -> None:
        self.want = _toggles(name)

    def __enter__(self):
        from chopgrad_core import decoder
        from chopgrad_core.adapters import cogvideox, wan

        self.grad_only, decoder.GRAD_ONLY_LAST_CONV = decoder.GRAD_ONLY_LAST_CONV, self.want["grad_only"]
        saved = cogvideox._SavedOnHost
        self.ahead = saved.across_passes, saved.ahead_of_block
        saved.across_passes, saved.ahead_of_block = self.want["across_passes"], self.want["ahead_of_block"]
        self.saved = (wan._CheckpointSaver.early_start, wan._SlotIO.ahead_of_slotless,
                      cogvideox.INDEX_ON_DEVICE, cogvideox.SPLIT_RESNET_BACKWARD, wan._SlotIO.save_host_copies)
        wan._SlotIO.save_host_copies = self.want["save_host_copies"]
        self.lean, wan.LEAN_FORWARD = wan.LEAN_FORWARD, self.want["lean"]
        wan._CheckpointSaver.early_start = self.want["early_start"]
        wan._SlotIO.ahead_of_slotless = self.want["ahead_of_slotless"]
        cogvideox.INDEX_ON_DEVICE = self.want["index_on_device"]
        cogvideox.SPLIT_RESNET_BACKWARD = self.want["split"]
        return self

    def __exit__(self, *exc):
        from chopgrad_core import decoder
        from chopgrad_core.adapters import cogvideox, wan

        decoder.GRAD_ONLY_LAST_CONV = self.grad_only
        cogvideox._SavedOnHost.across_passes, cogvideox._SavedOnHost.ahead_of_block = self.ahead
        (wan._CheckpointSaver.early_start, wan._SlotIO.ahead_of_slotless, cogvideox.INDEX_ON_DEVICE,
         cogvideox.SPLIT_RESNET_BACKWARD, wan._SlotIO.save_host_copies) = self.saved
        wan.LEAN_FORWARD = self.lean


def issue15_g_cases(part: str) -> list[Case]:
    """g1: part g's levers against their state before (same process, warmed up, against plain D=0);
    g2: Wan 480x832, the lean forward against diffusers' modules (one short call)."""
    cog8 = dict(COG, memory_budget_gib=8.0)
    # What the budget planned before part g (480x720, budget 8): no reuse of the statistics pass.
    cog8_before = dict(COG, recompute_plan=dict(strips=5, offload_checkpoints=True))
    if part == "g1":  # 17 frames (and CogVideoX 49), each lever against its state before
        cases = [Case("naive", 17, 1, NAIVE, hw=P480), Case("low_memory", 17, 1, _lm(6.0), hw=P480),
                 Case("low_memory-before", 17, 1, _lm(6.0), hw=P480),
                 Case("low_memory-keepslots", 17, 1, _lm(6.0), hw=P480)]
        cases += [Case("naive", 17, 1, NAIVE, family="cogvideox", hw=C480),
                  Case("strips", 17, 1, cog8, family="cogvideox", hw=C480),
                  Case("strips-before", 17, 1, cog8_before, family="cogvideox", hw=C480),
                  Case("strips-nosplit", 17, 1, cog8, family="cogvideox", hw=C480),
                  Case("strips-noreuse", 17, 1, cog8_before, family="cogvideox", hw=C480),
                  Case("naive", 49, 1, NAIVE, family="cogvideox", hw=C480),
                  Case("strips", 49, 1, cog8, family="cogvideox", hw=C480)]
        cases += [Case("naive", 17, 1, NAIVE, hw=P896), Case("low_memory", 17, 1, _lm(8.0), hw=P896),
                  Case("low_memory-before", 17, 1, _lm(8.0), hw=P896)]
        return cases
    if part == "g3":
        return list(ISSUE15_G3)
    if part == "h1":
        return list(ISSUE15_H1)
    if part == "h2":
        return list(ISSUE15_H2)
    if part == "h3":
        return list(ISSUE15_H3)
    if part == "h4":
        return list(ISSUE15_H4)
    # g2 (one short device call): Wan 480x832's lean forward against diffusers' modules.
    return [Case("naive", 17, 1, NAIVE, hw=P480), Case("low_memory-lean", 17, 1, _lm(6.0), hw=P480),
            Case("low_memory", 17, 1, _lm(6.0), hw=P480), Case("naive", 121, 1, NAIVE, hw=P480),
            Case("low_memory-lean", 121, 1, _lm(6.0), hw=P480), Case("low_memory", 121, 1, _lm(6.0), hw=P480)]


# g3 (one device call, at most ~8 minutes): Wan 896x1600's lean forward against the default and plain
# D=0 at 17 and 121 frames, then CogVideoX 848x1600 at 49 frames with the budgeted strips (memory only:
# plain D=0 does not fit, 294 GiB by the memory model). Wan first: its rows are on disk before the
# CogVideoX case pins ~113 GiB of host memory (part f). Expected seconds per case, its untimed call
# included (comments), from parts e, f and g1 on one H200; 241 frames (~230 s more with plain) does not fit.
# The CogVideoX plan at budget 16 now fetches the streamed cache after each block (``prefetch_cache``
# off: memory model 16.11 -> 14.81 GiB at 25 and more frames); part f measured 16.29 GiB with it on.
ISSUE15_G3 = [  # expected seconds, the untimed call included, in each comment
    Case("naive", 17, 1, NAIVE, hw=P896),  # 8
    Case("low_memory", 17, 1, _lm(8.0), hw=P896),  # 50: the first call pins 40 GiB of host buffers
    Case("low_memory-lean", 17, 1, _lm(8.0), hw=P896),  # 12
    Case("naive", 121, 1, NAIVE, hw=P896),  # 30
    Case("low_memory", 121, 1, _lm(8.0), hw=P896),  # 48
    Case("low_memory-lean", 121, 1, _lm(8.0), hw=P896),  # 48
    Case("strips", 49, 1, dict(COG, memory_budget_gib=16.0), family="cogvideox", hw=C848),  # 170: pins ~113 GiB
]
ISSUE15_G3_BUDGET_S = 260.0  # the CogVideoX case starts by then or not at all: ~7.5 minutes in all


# Part h (two device calls): the recomputation's last convolution per block run for its gradients only
# (``chopgrad_core.decoder.GRAD_ONLY_LAST_CONV``, on by default), against it off ("-convfwd") and with
# Wan's lean forward ("-lean"). h1: the time targets in order of how far each was (Wan 480x832 1.35x,
# CogVideoX 480x720 2x, Wan 896x1600 1.5x at 17 and 121 frames). h2: what h1 leaves: Wan 896x1600 at
# 241 frames and 6 cameras, CogVideoX 848x1600 at 49 frames (memory; plain D=0 does not fit).
ISSUE15_H1 = [
    Case("naive", 17, 1, NAIVE, hw=P480),
    Case("low_memory", 17, 1, _lm(6.0), hw=P480),
    Case("low_memory-convfwd", 17, 1, _lm(6.0), hw=P480),
    Case("low_memory-lean", 17, 1, _lm(6.0), hw=P480),
    Case("naive", 121, 1, NAIVE, hw=P480),
    Case("low_memory", 121, 1, _lm(6.0), hw=P480),
    Case("low_memory-lean", 121, 1, _lm(6.0), hw=P480),
    Case("naive", 17, 1, NAIVE, family="cogvideox", hw=C480),
    Case("strips", 17, 1, dict(COG, memory_budget_gib=8.0), family="cogvideox", hw=C480),
    Case("strips-convfwd", 17, 1, dict(COG, memory_budget_gib=8.0), family="cogvideox", hw=C480),
    Case("naive", 49, 1, NAIVE, family="cogvideox", hw=C480),
    Case("strips", 49, 1, dict(COG, memory_budget_gib=8.0), family="cogvideox", hw=C480),
    Case("naive", 17, 1, NAIVE, hw=P896),
    Case("low_memory", 17, 1, _lm(8.0), hw=P896),  # the first call at this size pins ~40 GiB of host buffers
    Case("low_memory-lean", 17, 1, _lm(8.0), hw=P896),
    Case("naive", 121, 1, NAIVE, hw=P896),
    Case("low_memory", 121, 1, _lm(8.0), hw=P896),
    Case("low_memory-lean", 121, 1, _lm(8.0), hw=P896),
]
# h2 ran with the lean forward on in every case (its rows are named without "-lean": the recorded
# command overrode the toggles, benchmarks/RESULTS.md); the cases now say so themselves.
ISSUE15_H2 = [
    Case("naive", 241, 1, NAIVE, hw=P896),
    Case("low_memory-lean", 241, 1, _lm(8.0), hw=P896),
    Case("naive", 17, 6, dict(NAIVE, micro_batch=1), hw=P896),
    Case("low_memory-lean", 17, 6, _lm(8.0), hw=P896),
    Case("strips", 49, 1, dict(COG, memory_budget_gib=16.0), family="cogvideox", hw=C848),  # pins ~113 GiB
]


# h3: CogVideoX 480x720, the levers left for its 2x target: 4 strips (planned at budget 8: 5), conv1's
# output kept between a resnet's two backward passes ("-keeph1", ``RecomputePlan.keep_conv1_output``;
# the run set it with a module switch that became this plan field), both. Memory model: 6.37 / 7.11 GiB
# for 5 / 4 strips, 7.11 / 7.85 GiB with conv1's output kept.
def _cog_plan(strips: int, keep: bool) -> dict:
    return dict(COG, recompute_plan=dict(strips=strips, offload_checkpoints=True, reuse_stats_pass=True,
                                         keep_conv1_output=keep))


ISSUE15_H3 = [
    Case("naive", 17, 1, NAIVE, family="cogvideox", hw=C480),
    Case("strips", 17, 1, dict(COG, memory_budget_gib=8.0), family="cogvideox", hw=C480),
    Case("strips-keeph1", 17, 1, _cog_plan(5, True), family="cogvideox", hw=C480),
    Case("strips4", 17, 1, _cog_plan(4, False), family="cogvideox", hw=C480),
    Case("strips4-keeph1", 17, 1, _cog_plan(4, True), family="cogvideox", hw=C480),
    Case("naive", 49, 1, NAIVE, family="cogvideox", hw=C480),
    Case("strips", 49, 1, dict(COG, memory_budget_gib=8.0), family="cogvideox", hw=C480),
    Case("strips-keeph1", 49, 1, _cog_plan(5, True), family="cogvideox", hw=C480),
    Case("strips4", 49, 1, _cog_plan(4, False), family="cogvideox", hw=C480),
    Case("strips4-keeph1", 49, 1, _cog_plan(4, True), family="cogvideox", hw=C480),
]


# h4: CogVideoX 480x720, the checkpoint pieces fetched ahead across a block's strip passes and into the
# next strip block's backward (the h3 profile: the GPU busy 78% of the wall, 0.87 s of host-to-device
# copies), against neither ("-noahead") and the passes alone ("-passesonly"), with and without conv1's
# output kept.
ISSUE15_H4 = [
    Case("naive", 17, 1, NAIVE, family="cogvideox", hw=C480),
    Case("strips", 17, 1, dict(COG, memory_budget_gib=8.0), family="cogvideox", hw=C480),
    Case("strips-noahead", 17, 1, dict(COG, memory_budget_gib=8.0), family="cogvideox", hw=C480),
    Case("strips-passesonly", 17, 1, dict(COG, memory_budget_gib=8.0), family="cogvideox", hw=C480),
    Case("strips-keeph1", 17, 1, _cog_plan(5, True), family="cogvideox", hw=C480),
    Case("naive", 49, 1, NAIVE, family="cogvideox", hw=C480),
    Case("strips", 49, 1, dict(COG, memory_budget_gib=8.0), family="cogvideox", hw=C480),
    Case("strips-noahead", 49, 1, dict(COG, memory_budget_gib=8.0), family="cogvideox", hw=C480),
    Case("strips-keeph1", 49, 1, _cog_plan(5, True), family="cogvideox", hw=C480),
]


def summary(rows: list[Row]) -> str:
    """One line per size and length: plain D=0's time, then each other case's ratio to it and its peak."""
    groups: dict[tuple[str, int, int], list[Row]] = {}
    for r in rows:
        family, size, name = r.case.split(" ", 2)
        groups.setdefault((f"{family} {size}", r.frames, r.cameras), []).append(r)
    lines = ["| size | frames x cameras | plain D=0 | cases: x plain, peak GiB |", "|---|---|---|---|"]
    for (size, frames, cams), rs in groups.items():
        plain = next((r for r in rs if r.case.split(" ", 2)[2].startswith("naive")), None)
        base = f"{plain.seconds:.2f} s" if plain and plain.seconds else "-"
        parts = []
        for r in rs:
            if r is plain:
                continue
            name = r.case.split(" ", 2)[2]
            if r.seconds is None:
                parts.append(f"{name}: {r.note.split(';')[0]}")
                continue
            ratio = f"{r.seconds / plain.seconds:.2f}x" if plain and plain.seconds else f"{r.seconds:.2f} s"
            parts.append(f"{name} {ratio}, {r.peak_gib:.2f}")
        lines.append(f"| {size} | {frames} x {cams} | {base} | {'; '.join(parts)} |")
    return "\n".join(lines) + "\n"


def profile_case(vae, case: Case, path: Path, device: str = "cuda") -> None:
    """One warmed-up call under torch.profiler: wall time, the time the GPU ran kernels (their
    union), copies each way, synchronisations the CPU waited on, the top kernels. Appends to ``path``."""
    from torch.profiler import ProfilerActivity, profile

    z, target = make_inputs(vae, case, case.hw, device, next(vae.parameters()).dtype)
    with lever_toggles(case.name):
        run_case(vae, case, z, target)
        sync(device)
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            t0 = time.perf_counter()
            run_case(vae, case, z, target)
            sync(device)
            wall = time.perf_counter() - t0
    kernels, copies = [], {"HtoD": 0.0, "DtoH": 0.0, "DtoD": 0.0}
    for e in prof.events():
        if e.device_type.name != "CUDA":
            continue
        span = (e.time_range.start, e.time_range.end)
        kind = next((k for k in copies if k in e.name), None)
        if kind is not None:
            copies[kind] += (span[1] - span[0]) / 1e6
        elif "Memset" not in e.name:
            kernels.append(span)
    busy, end = 0.0, None
    for a, b in sorted(kernels):
        if end is None or a > end:
            busy, end = busy + (b - a), b
        elif b > end:
            busy, end = busy + (b - end), b
    syncs = {k.key: k.count for k in prof.key_averages() if "Synchronize" in k.key or k.key == "cudaHostAlloc"}
    table = prof.key_averages().table(sort_by="self_device_time_total", row_limit=14, max_name_column_width=60)
    with open(path, "a") as f:
        f.write(f"## {case.family} {case.hw} {case.name} {case.frames}x{case.cameras}: wall {wall:.3f} s, "
                f"kernels busy {busy / 1e6:.3f} s ({busy / 1e6 / wall:.0%}), copies s {copies}, syncs {syncs}\n")
        f.write(table + "\n\n")
    print(f"profiled {case.family} {case.hw} {case.name}: wall {wall:.3f} s, kernels busy {busy / 1e6:.3f} s, "
          f"copies {copies}, syncs {syncs}", flush=True)


def run_issue15(cases: list[Case], deadline: float | None = None, partial=None) -> list[Row]:
    """All cases in one process (pinned buffers are allocated once, as in training), warmed up per
    VAE and size with plain D=0 and each configuration at a short length. Notes: time against
    plain D=0 of the same size, frames and cameras; bf16 relative gradient difference to plain D=0."""
    from chopgrad_core import engine
    from chopgrad_core.decoder import CacheOffloader

    rows, vaes, plain_time, plain_grad = [], {}, {}, {}
    lever_grad, size = {}, None
    for n, case in enumerate(cases):
        hw = case.hw
        if (case.family, hw) != size:  # the last size's pinned buffers are not needed again
            size = (case.family, hw)
            release_host_buffers()
        if deadline is not None and time.perf_counter() > deadline:  # keep what was measured
            for rest in cases[n:]:
                rows.append(Row(f"{rest.family} {rest.hw[0]}x{rest.hw[1]} {rest.name}", rest.frames, rest.cameras,
                                None, None, None, "not run: time budget"))
            break
        if case.family not in vaes:
            vaes.clear()
            engine.release_offload_buffers()  # the other family's pinned host buffers
            torch.cuda.empty_cache()
            vaes[case.family] = make_vae("full", "cuda", torch.bfloat16, case.family)
        vae = vaes[case.family]
        streams = 1 if case.name.endswith("-1stream") else 2
        if streams != CacheOffloader.copy_streams:  # a fresh offloader with that many copy streams
            CacheOffloader.copy_streams = streams
            engine.release_offload_buffers()
        # Warm-up before every timed case: one untimed call with the same settings at up to 17
        # frames (Wan: 5 groups, CogVideoX: its two group shapes), one camera where cameras go one
        # at a time, so every shape's cuDNN plans and every pinned host buffer (the offloader's
        # rings, restarted per call) exist before the clock starts. Full backprop: 5 / 9 frames.
        warm_frames = min(case.frames, 17) if case.name != "full" else (5 if case.family == "wan" else 9)
        warm_cams = 1 if case.kwargs.get("micro_batch") else case.cameras
        with lever_toggles(case.name):
            measure_cuda(vae, Case(case.name, warm_frames, warm_cams, case.kwargs, case.family, hw), hw,
                         torch.bfloat16)
            row, grad = measure_cuda(vae, case, hw, torch.bfloat16)
        row.case = f"{case.family} {hw[0]}x{hw[1]} {case.name}"
        base = (case.family, hw, case.frames, case.cameras)
        if case.name.startswith("naive") and row.seconds is not None:
            plain_time[base] = row.seconds
            if case.cameras == 1 and case.frames == 17:
                plain_grad[(case.family, hw)] = grad.cpu()
        elif row.seconds is not None:
            notes = []
            if base in plain_time:
                notes.append(f"{row.seconds / plain_time[base]:.2f}x plain D=0")
            ref = plain_grad.get((case.family, hw))
            if ref is not None and case.frames == 17 and case.cameras == 1 and case.name != "full" \
                    and case.kwargs.get("window", 0) == 0:
                g = grad.cpu()
                notes.append(f"grad rel diff {float((g - ref).norm() / ref.norm()):.1e}")
                other = lever_grad.get((case.family, hw, json.dumps(case.kwargs, sort_keys=True)))
                if other is not None:  # same configuration, the other number of copy streams (or levers)
                    notes.append(f"vs {other[0]} {float((g - other[1]).norm() / other[1].norm()):.1e}")
                lever_grad[(case.family, hw, json.dumps(case.kwargs, sort_keys=True))] = (case.name, g)
            if isinstance(case.kwargs.get("recompute_plan"), dict):
                p = case.kwargs["recompute_plan"]
                notes.append(f"plan (given): strips {p.get('strips', 1)}, keep {p.get('keep_below', 0)}, "
                             f"ckpt offload {p.get('offload_checkpoints', False)}")
            elif case.kwargs.get("memory_budget_gib"):
                dec = cg.wrap(vae)
                z = torch.empty(1, dec.latent_channels, latent_frames(case.frames), hw[0] // 8, hw[1] // 8,
                                dtype=torch.bfloat16)
                plan = dec.plan_recompute(z, case.kwargs["memory_budget_gib"])
                notes.append(f"plan: strips {plan.strips}, keep {plan.keep_below}, "
                             f"ckpt offload {plan.offload_checkpoints}"
                             + (f", reuse {plan.reuse_stats_pass}, prefetch {plan.prefetch_cache}"
                                if case.family == "cogvideox" else ""))
            row.note = "; ".join(notes)
        elif row.note == "out of memory":
            row.note = "out of memory (expected)" if case.family == "cogvideox" and hw == C848 else row.note
        del grad
        host = host_memory()
        row.note = "; ".join(n for n in (row.note, host) if n)
        rows.append(row)
        print(fmt_row(rows[-1]), flush=True)
        if partial is not None:  # results so far on disk after every case: a cut call still leaves them
            partial(rows)
    CacheOffloader.copy_streams = 2
    return rows


def model_issue15_cases() -> list[Case]:
    """The memory model's view of issue 15 (CPU, fake tensors): every plotted configuration,
    full backprop where the GPU cannot hold it, and the configurations the planner chooses."""
    cases = []
    for hw, budget in ((P480, 6.0), (P896, 8.0)):
        for frames in (9, 17, 33):
            cases.append(Case("full", frames, 1, dict(mode="full"), hw=hw))
        cases += [Case("naive", 17, 1, NAIVE, hw=hw), Case("low_memory", 17, 1, _lm(budget), hw=hw),
                  Case("low_memory-D1", 17, 1, _lm(budget, window=1), hw=hw),
                  Case("low_memory-issue2", 17, 1, LOW_MEMORY, hw=hw)]
    cog = dict(NAIVE, micro_batch=1, recompute=True, offload_cache=True)
    for hw, budget in ((C480, 8.0), (C848, 16.0)):
        cases += [Case("naive", 17, 1, NAIVE, family="cogvideox", hw=hw),
                  Case("levers", 17, 1, dict(cog, memory_budget_gib=budget), family="cogvideox", hw=hw)]
    return cases


def scenario_cases(name: str) -> tuple[list[Case], tuple[int, int]]:
    if name in ("h200-issue15-a", "h200-issue15-b"):
        return issue15_cases(name[-1]), P480
    if name == "h200-issue15-c":
        return issue15_c_cases(), P480
    if name in ("h200-issue15-d", "h200-issue15-e", "h200-issue15-f"):
        return issue15_def_cases(name[-1]), P480
    if name in ("h200-issue15-g1", "h200-issue15-g2", "h200-issue15-g3", "h200-issue15-h1", "h200-issue15-h2",
                "h200-issue15-h3", "h200-issue15-h4"):
        return issue15_g_cases(name[-2:]), P480
    if name == "model-issue15":
        return model_issue15_cases(), P480
    if name == "model-issue15-c":
        return model_issue15_c_cases(), C480
    if name == "cpu-small":
        cases = []
        for frames in (9, 17, 33):
            cases += [Case("decode", frames, 1), Case("full", frames, 1), Case("naive", frames, 1, NAIVE),
                      Case("sliding-D1", frames, 1, dict(mode="sliding", window=1)),
                      Case("block-k2", frames, 1, dict(mode="block", window=2)),
                      Case("recompute", frames, 1, FAST),
                      Case("recompute", frames, 2, FAST)]
        return cases, (64, 96)
    if name == "h100-explore":
        cases = []
        for frames in (17, 33):
            cases += [Case("decode", frames, 1), Case("naive", frames, 1, NAIVE),
                      Case("naive+recompute", frames, 1, dict(NAIVE, recompute=True)),
                      Case("naive+tile30x52", frames, 1, dict(NAIVE, tile=(30, 52), tile_halo=4)),
                      Case("naive+recompute+tile30x52", frames, 1, SMALL),
                      Case("sliding-D1+recompute", frames, 1, dict(mode="sliding", window=1, recompute=True))]
        return cases, (480, 832)
    if name == "h100-anchor":
        cases = [Case("full", 17, 1)]
        for name_, kw in (("decode", {}), ("naive", NAIVE), ("recompute", FAST), ("recompute+tile", SMALL)):
            cases += [Case(name_, frames, 1, kw) for frames in (17, 33, 121)]
        cases += [Case("full", 33, 1), Case("naive", 17, 6, NAIVE),
                  Case("recompute", 121, 6, FAST), Case("recompute+tile", 121, 6, SMALL)]
        return cases, (480, 832)
    if name == "h100-levers":  # exact levers toward the 6 GiB target, clean in-process timings
        lean = dict(FAST, recompute_strips=4, offload_cache=True)
        cases = [Case("naive", 17, 1, NAIVE), Case("recompute", 17, 1, FAST),
                 Case("recompute+strips4", 17, 1, dict(FAST, recompute_strips=4)),
                 Case("lean", 17, 1, lean), Case("lean-strips8", 17, 1, dict(lean, recompute_strips=8)),
                 Case("naive", 121, 1, NAIVE), Case("lean", 121, 1, lean), Case("lean", 33, 6, lean)]
        return cases, (480, 832)
    if name == "h100-long":  # clean timings at both ends of the length range, one camera
        cases = [Case(n, f, 1, kw) for f in (17, 121)
                 for n, kw in (("decode", {}), ("naive", NAIVE), ("recompute", FAST), ("recompute+tile", SMALL))]
        return cases, (480, 832)
    if name == "model-480p":  # predicted peaks, full size on fake tensors (CPU, seconds); 13 frames: steady state
        lm = LOW_MEMORY
        cases = [Case("naive", 13, 1, NAIVE), Case("recompute", 13, 1, FAST),
                 Case("recompute+strips4", 13, 1, dict(FAST, recompute_strips=4)),
                 Case("low_memory", 13, 1, lm), Case("low_memory-strips6", 13, 1, dict(lm, recompute_strips=6)),
                 Case("low_memory", 13, 6, lm)]
        return cases, (480, 832)
    if name == "h100-target":  # issue 2's target: <= 6 GiB at 17..121 frames, 1 and 6 cameras, <= 1.5x naive
        lm = LOW_MEMORY
        cases = [Case("naive", 17, 1, NAIVE), Case("low_memory", 17, 1, lm),
                 Case("naive", 121, 1, NAIVE), Case("low_memory", 121, 1, lm),
                 Case("low_memory", 17, 6, lm), Case("low_memory", 33, 6, lm),
                 Case("naive-mb1", 17, 6, dict(NAIVE, micro_batch=1)),
                 Case("low_memory-strips6", 17, 1, dict(lm, recompute_strips=6))]
        return cases, (480, 832)
    raise SystemExit(f"unknown scenario {name!r}: cpu-small, model-480p, h100-explore, h100-anchor, h100-long, "
                     "h100-levers, h100-target")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", default="cpu-small")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--in-process", action="store_true", help="GPU: all cases in one process (no OOM cases)")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="h200-issue15-*: start no case after this many seconds (the rest: 'not run')")
    ap.add_argument("--plot", nargs="+", help="issue-15 result JSON files to plot (h200-issue15-*, model-issue15*)")
    ap.add_argument("--png", default=str(Path(__file__).parent / "chopgrad_memory_issue15.png"))
    ap.add_argument("--profile", nargs="*", help="h200-issue15-*: after the cases, profile these "
                    "(family:HxW:frames:case name, e.g. wan:480x832:17:low_memory-before)")
    ap.add_argument("--case", help=argparse.SUPPRESS)
    ap.add_argument("--hw", nargs=2, type=int, help=argparse.SUPPRESS)
    ap.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    ap.add_argument("--ref", help=argparse.SUPPRESS)
    ap.add_argument("--warm-own", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    import faulthandler

    faulthandler.enable()  # a crash in native code prints where it happened
    if args.case:
        return case_main(args.case, args.hw, args.device, args.ref, args.warm_own)
    if args.plot:
        return plot_issue15(args.plot, args.png)

    start = time.perf_counter()
    cases, hw = scenario_cases(args.scenario)
    rows: list[Row] = []
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def write(rows, device_name):
        table = render(rows, args.scenario, device_name, hw)
        path = out / f"chopgrad_memory_{args.scenario}_{device_name}_{dt.date.today().isoformat()}.md"
        path.write_text(table)
        path.with_suffix(".json").write_text(json.dumps(dict(
            scenario=args.scenario, device=device_name, hw=list(hw), torch=torch.__version__,
            date=dt.date.today().isoformat(), seconds=round(time.perf_counter() - start, 1),
            cases=[asdict(c) for c in cases], rows=[asdict(r) for r in rows]), indent=1) + "\n")
        return table, path

    if args.scenario in ("model-480p", "model-issue15", "model-issue15-c"):
        device_name = "cpu-model"
        for case in cases:
            rows.append(model_peak(case, hw))
            rows[-1].case = f"{case.family} {(case.hw or hw)[0]}x{(case.hw or hw)[1]} {case.name}"
            print(fmt_row(rows[-1]), flush=True)
    elif args.scenario.startswith("h200-issue15"):
        device_name = torch.cuda.get_device_name().replace(" ", "-")
        budget_s = args.budget_s or (ISSUE15_G3_BUDGET_S if args.scenario == "h200-issue15-g3" else None)
        deadline = start + budget_s if budget_s else None
        rows = run_issue15(cases, deadline, partial=lambda rows: write(rows, device_name))
        for spec in args.profile or []:  # "family:HxW:frames:name", e.g. wan:480x832:17:low_memory
            family, size, frames, name = spec.split(":")
            hw_p = tuple(int(v) for v in size.split("x"))
            match = next(c for c in cases if c.family == family and c.hw == hw_p and c.name == name.split("-")[0])
            case = Case(name, int(frames), 1, match.kwargs, family, hw_p)
            profile_case(make_vae("full", "cuda", torch.bfloat16, family), case,
                         out / f"chopgrad_memory_{args.scenario}_{device_name}_profile.txt")
    elif args.scenario == "h100-target":
        # One fresh process per case, warmed up with the case's own settings (see case_main).
        device_name = torch.cuda.get_device_name().replace(" ", "-")
        for case in cases:
            rows.append(measure_subprocess(case, hw, "cuda", None, warm_own=True))
            print(fmt_row(rows[-1]), flush=True)
    elif args.scenario.startswith("h100"):
        # One fresh process per case: an out-of-memory case leaves the caching allocator holding
        # memory (and a traceback holding tensors), which starved and slowed every later case.
        device_name = torch.cuda.get_device_name().replace(" ", "-")
        ref_path = Path(args.out) / "full_grad.pt"
        if args.in_process:  # faster; only for case lists with no out-of-memory case
            vae = make_vae("full", "cuda", torch.bfloat16)
            measure_cuda(vae, Case("naive", 5, 1, NAIVE), hw, torch.bfloat16)  # warm-up
        for case in cases:
            if args.in_process:
                rows.append(measure_cuda(vae, case, hw, torch.bfloat16)[0])
            else:
                rows.append(measure_subprocess(case, hw, "cuda", ref_path))
            print(fmt_row(rows[-1]), flush=True)
        ref_path.unlink(missing_ok=True)
        if args.scenario == "h100-levers":  # the exact levers must not change the gradient
            z, target = make_inputs(vae, Case("naive", 17, 1), hw, "cuda", torch.bfloat16)
            plain = run_case(vae, Case("recompute", 17, 1, FAST), z, target)
            lean = run_case(vae, Case("lean", 17, 1, dict(FAST, recompute_strips=4, offload_cache=True)), z, target)
            print(f"lean vs recompute gradient: relative difference {float((lean - plain).norm() / plain.norm()):.2e}")
    else:
        device_name = "cpu"
        for case in cases:
            rows.append(measure_subprocess(case, hw, "cpu", None))
            print(fmt_row(rows[-1]), flush=True)
        # Gradient cosines in-process (memory is not measured here).
        torch.set_flush_denormal(True)
        vae, refs = make_vae("small", "cpu", torch.float32), {}
        for row, case in zip(rows, cases):
            if case.name == "decode":
                continue
            z, target = make_inputs(vae, case, hw, "cpu", torch.float32)
            key = (case.frames, case.cameras)
            if key not in refs:
                refs[key] = run_case(vae, Case("full", case.frames, case.cameras), z, target)
            grad = run_case(vae, case, z, target)
            row.cosine = float(F.cosine_similarity(grad.flatten(), refs[key].flatten(), dim=0))
    table, path = write(rows, device_name)
    print(table)
    if args.scenario.startswith("h200-issue15"):
        print(summary(rows))
    print(f"wrote {path} and .json ({time.perf_counter() - start:.0f} s)")


def plot_issue15(paths: list[str], png: str) -> None:
    """Peak memory against frames, one camera: plain D=0, low_memory (CogVideoX: its planned strips)
    and full backprop, Wan 2.1 VAE at 480x832 and 896x1600 and CogVideoX VAE at 480x720 and
    848x1600; measured (solid) and, where the GPU cannot hold it or it was not measured, the memory
    model (dashed). Inputs: h200-issue15-* and model-issue15* result JSON files; a later file's
    point replaces an earlier one's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Part h's rows with the defaults since (Wan's lean forward, CogVideoX's conv1 output kept at 480x720)
    # follow the plain ones in their files, so they are the points drawn.
    labels = {"naive": "plain D=0", "low_memory": "low_memory (budget planned)",
              "strips": "low_memory (budget planned)", "low_memory-lean": "low_memory (budget planned)",
              "strips-keeph1": "low_memory (budget planned)", "full": "full backprop"}
    series: dict[tuple, dict[int, float]] = {}
    capacity = None
    for path in paths:
        data = json.loads(Path(path).read_text())
        measured = not data["device"].startswith("cpu")
        if measured:
            capacity = 139.8  # H200: usable GiB torch reports
        for r in data["rows"]:
            family, size, name = r["case"].split(" ", 2)
            label = labels.get(name)
            if r["cameras"] != 1 or r["peak_gib"] is None or label is None:
                continue
            series.setdefault((family, size, label, measured), {})[r["frames"]] = r["peak_gib"]
    panels = [("wan", "480x832", 6.0), ("wan", "896x1600", 8.0), ("cogvideox", "480x720", 8.0),
              ("cogvideox", "848x1600", 16.0)]
    names = {"wan": "Wan 2.1 VAE", "cogvideox": "CogVideoX VAE"}
    fig, axes = plt.subplots(2, 2, figsize=(11, 8), sharey=True)
    colors = {"plain D=0": "tab:orange", "low_memory (budget planned)": "tab:green", "full backprop": "tab:red"}
    for ax, (family, size, target) in zip(axes.flat, panels):
        for (fam, sz, label, measured), pts in sorted(series.items()):
            if (fam, sz) != (family, size):
                continue
            if not measured and (fam, sz, label, True) in series:  # measured beats the model
                pts = {f: v for f, v in pts.items() if f not in series[(fam, sz, label, True)]}
                if not pts:
                    continue
            xs = sorted(pts)
            ax.plot(xs, [pts[x] for x in xs], "o-" if measured else "s--", color=colors[label],
                    label=label + ("" if measured else " (memory model)"), alpha=1.0 if measured else 0.6)
        ax.axhline(target, color="tab:blue", lw=0.8, ls="--")
        ax.text(1, target * 1.1, f"target {target:g} GiB", color="tab:blue", fontsize=8)
        if capacity:
            ax.axhline(capacity, color="gray", lw=0.8, ls=":")
            ax.text(1, capacity * 1.1, "H200 capacity", color="gray", fontsize=8)
        ax.set_title(f"{names[family]}, {size}, 1 camera, bf16", fontsize=10)
        ax.set_xlabel("frames")
        ax.set_xlim(0, 250)
        ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="upper right")
    for ax in axes[:, 0]:
        ax.set_ylabel("peak GPU memory above the model (GiB)")
    fig.suptitle("ChopGrad pixel loss, D=0, one NVIDIA H200 (measured: solid)", fontsize=11)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    print(f"wrote {png}")


def fmt_row(r: Row) -> str:
    sec = f"{r.seconds:.2f} s" if r.seconds is not None else "-"
    peak = f"{r.peak_gib:.2f} GiB" if r.peak_gib is not None else "-"
    if r.reserved_gib is not None:
        peak += f" ({r.reserved_gib:.2f} reserved)"
    cos = f"{r.cosine:.3f}" if r.cosine is not None else "-"
    return f"| {r.case} | {r.frames} | {r.cameras} | {sec} | {peak} | {cos} | {r.note} |"


def render(rows: list[Row], scenario: str, device: str, hw) -> str:
    head = (f"### chopgrad_memory {scenario} on {device}, {hw[0]}x{hw[1]}, torch {torch.__version__}, "
            f"{dt.date.today().isoformat()}\n\n| case | frames | cameras | time | peak | cosine vs full | note |\n"
            "|---|---|---|---|---|---|---|\n")
    return head + "\n".join(fmt_row(r) for r in rows) + "\n"


if __name__ == "__main__":
    main()
