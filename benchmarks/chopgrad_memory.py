"""Peak memory, time and gradient fidelity of ChopGrad pixel losses: frames x mode x window x cameras.

Named scenarios (``--scenario``):

- ``cpu-small``: a small Wan 2.1 VAE on the CPU; peak RSS per case in a fresh subprocess.
- ``h100-anchor``: the full-size Wan 2.1 VAE (default config, 127 M parameters, random weights),
  bf16, 480x832, L1 on every frame, gradient to the latents (DESIGN.md section 3). Peak is
  ``torch.cuda.max_memory_allocated`` above what was allocated before the call (model, latents
  and target), so it is the loss's own working memory.
- ``h100-explore``: a few lever combinations at 17 and 33 frames, one camera, to choose defaults.

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

GIB = 1024**3


@dataclass
class Case:
    name: str  # decode | full | naive | chopgrad configs
    frames: int
    cameras: int
    kwargs: dict = field(default_factory=dict)


@dataclass
class Row:
    case: str
    frames: int
    cameras: int
    seconds: float | None
    peak_gib: float | None
    cosine: float | None
    note: str = ""


def latent_frames(frames: int) -> int:
    assert (frames - 1) % 4 == 0, "Wan decodes T latent frames to 1 + 4(T-1) frames"
    return 1 + (frames - 1) // 4


# ---------------------------------------------------------------------------------------------


def make_vae(size: str, device: str, dtype: torch.dtype):
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    vae = AutoencoderKLWan() if size == "full" else AutoencoderKLWan(base_dim=16, z_dim=16, dim_mult=[1, 2, 2, 2],
                                                                    num_res_blocks=1)
    vae = vae.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return vae


def make_inputs(vae, case: Case, hw: tuple[int, int], device, dtype):
    g = torch.Generator(device="cpu").manual_seed(case.frames)
    h, w = hw[0] // 8, hw[1] // 8
    z = torch.randn(case.cameras, 16, latent_frames(case.frames), h, w, generator=g).to(device, dtype)
    target = (torch.rand(case.cameras, 3, case.frames, *hw, generator=g) * 2 - 1).to(device, dtype)
    return z, target


def run_case(vae, case: Case, z, target):
    """Returns (seconds, latent grad or None)."""
    if case.name == "decode":
        cg.decode(vae, z)
        return None
    zz = z.clone().requires_grad_()
    if case.name == "full":
        loss = F.l1_loss(vae.decode(zz).sample.float(), target.float())
    else:
        loss = cg.pixel_loss(vae, zz, target, **case.kwargs)
    loss.backward()
    return zz.grad.float()


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def measure_cuda(vae, case: Case, hw, dtype, reference=None) -> tuple[Row, torch.Tensor | None]:
    torch.cuda.empty_cache()
    z, target = make_inputs(vae, case, hw, "cuda", dtype)
    sync("cuda")
    base = torch.cuda.memory_allocated()
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
    cos = None
    if grad is not None and reference is not None:
        cos = float(F.cosine_similarity(grad.flatten(), reference.to(grad.device).flatten(), dim=0))
    return Row(case.name, case.frames, case.cameras, seconds, peak, cos), grad


def measure_subprocess(case: Case, hw, device: str, ref_path: Path | None) -> Row:
    cmd = [sys.executable, __file__, "--case", json.dumps(asdict(case)), "--hw", *map(str, hw), "--device", device]
    if ref_path is not None:
        cmd += ["--ref", str(ref_path)]
    # CPU: glibc keeps freed heap pages, so peak RSS would count fragmentation; serving large
    # allocations with mmap returns freed tensors to the OS (the constant-memory test does the same).
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        return Row(case.name, case.frames, case.cameras, None, None, None, "failed: " + out.stderr.strip()[-200:])
    return Row(**json.loads(out.stdout.strip().splitlines()[-1]))


def case_main(case_json: str, hw, device: str, ref: str | None) -> None:
    case = Case(**json.loads(case_json))
    if device == "cuda":
        vae = make_vae("full", "cuda", torch.bfloat16)
        measure_cuda(vae, Case("naive", 5, 1, NAIVE), hw, torch.bfloat16)  # cudnn autotuning, allocator warm-up
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


def scenario_cases(name: str) -> tuple[list[Case], tuple[int, int]]:
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
    raise SystemExit(f"unknown scenario {name!r}: cpu-small, h100-explore, h100-anchor, h100-long, h100-levers")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", default="cpu-small")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--in-process", action="store_true", help="GPU: all cases in one process (no OOM cases)")
    ap.add_argument("--case", help=argparse.SUPPRESS)
    ap.add_argument("--hw", nargs=2, type=int, help=argparse.SUPPRESS)
    ap.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    ap.add_argument("--ref", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        return case_main(args.case, args.hw, args.device, args.ref)

    cases, hw = scenario_cases(args.scenario)
    rows: list[Row] = []
    if args.scenario.startswith("h100"):
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
    table = render(rows, args.scenario, device_name, hw)
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"chopgrad_memory_{args.scenario}_{device_name}_{dt.date.today().isoformat()}.md"
    path.write_text(table)
    print(f"wrote {path}")


def fmt_row(r: Row) -> str:
    sec = f"{r.seconds:.2f} s" if r.seconds is not None else "-"
    peak = f"{r.peak_gib:.2f} GiB" if r.peak_gib is not None else "-"
    cos = f"{r.cosine:.3f}" if r.cosine is not None else "-"
    return f"| {r.case} | {r.frames} | {r.cameras} | {sec} | {peak} | {cos} | {r.note} |"


def render(rows: list[Row], scenario: str, device: str, hw) -> str:
    head = (f"### chopgrad_memory {scenario} on {device}, {hw[0]}x{hw[1]}, torch {torch.__version__}, "
            f"{dt.date.today().isoformat()}\n\n| case | frames | cameras | time | peak | cosine vs full | note |\n"
            "|---|---|---|---|---|---|---|\n")
    return head + "\n".join(fmt_row(r) for r in rows) + "\n"


if __name__ == "__main__":
    main()
