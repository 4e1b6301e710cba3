"""Training-step time and peak memory of each task head: ChopGrad against full backprop through the decoder.

One step = encode the baseline and the pixel target (no grad), the one-step transformer, the latent
loss plus the pixel loss on the decoded prediction, backward into the transformer *and* the decoder's
parameters (train_decoder), AdamW step. The degradation (CPU: JPEG, masks, ...) is made once before
timing; it is not part of the step.

Named scenarios (``--scenario``):

- ``cpu-small``: the tiny models of the tests (tiny Wan 2.1 VAE, 2-layer transformer), fp32, 64x96,
  9 frames, batch 1; peak RSS per case in a fresh subprocess.
- ``h100``: one H100; full-size Wan 2.1 VAE (``AutoencoderKLWan()`` default config, 127 M
  parameters, random weights), bf16, 480x832 output, 49 frames (13 latent frames), batch 1. The
  transformer is a modest Wan: 4 blocks of Wan 2.1 1.3B's width (12 heads x 128, ffn 8960),
  about 0.2 B parameters; it sees 13 x 30 x 52 = 20,280 tokens. Peak is
  ``torch.cuda.max_memory_allocated`` during the timed steps above what was allocated before them
  (models, AdamW state, inputs): the step's own working memory. Out of memory is a result.

Cases per head: ``chopgrad`` = sliding D=0 with ``recompute=True, micro_batch=1`` (exact levers);
``chopgrad-D1`` = sliding D=1 with recompute (the paper's inpainting setting); ``full`` = plain
autograd through every decoder group. Each case runs in its own process, so an out-of-memory case
cannot starve the next one.

    python benchmarks/heads_step.py --scenario cpu-small
    python benchmarks/heads_step.py --scenario h100
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hardware import cpu_model  # noqa: E402

GIB = 1024**3

CHOPGRAD = dict(mode="sliding", window=0, recompute=True, micro_batch=1)
CHOPGRAD_D1 = dict(mode="sliding", window=1, recompute=True, micro_batch=1)
FULL = dict(mode="full")


@dataclass
class Case:
    head: str
    name: str
    chopgrad: dict = field(default_factory=dict)


@dataclass
class Row:
    head: str
    case: str
    seconds: float | None
    peak_gib: float | None
    note: str = ""


SCENARIOS = {
    "cpu-small": dict(hw=(64, 96), frames=9, device="cpu", dtype="float32", steps=2, model={}, vae="tiny", timeout=300,
                      cases=[(h, n, kw) for h in ("sr", "inpaint", "enhance")
                             for n, kw in (("chopgrad", CHOPGRAD), ("chopgrad-D1", CHOPGRAD_D1), ("full", FULL))]),
    # timeout: a case not done by then is reported as such (the whole scenario stays under ~4 minutes).
    "h100": dict(hw=(480, 832), frames=49, device="cuda", dtype="bfloat16", steps=2, vae="wan2.1", timeout=75,
                 model=dict(num_attention_heads=12, attention_head_dim=128, num_layers=4, ffn_dim=8960, text_dim=256),
                 cases=[(h, n, kw) for h in ("sr", "inpaint", "enhance")
                        for n, kw in (("chopgrad", CHOPGRAD), ("full", FULL))]),
}


# ---------------------------------------------------------------------------------------------


def build(scenario: dict, head_name: str):
    from chopgrad_core.heads import HeadModelConfig, OneStepRestorer, make_head

    torch.manual_seed(0)
    head = make_head({"name": head_name})
    vae = None
    if scenario["vae"] == "wan2.1":
        from diffusers import AutoencoderKLWan

        vae = AutoencoderKLWan()  # Wan 2.1 default config, random weights
    model = OneStepRestorer(HeadModelConfig(**scenario["model"]), head.extra_channels, vae=vae)
    dtype = getattr(torch, scenario["dtype"])
    model = model.to(device=scenario["device"], dtype=dtype)
    return model, head


def one_step(model, head, sample, clean, chopgrad, optimizer) -> None:
    losses = model.losses(head, sample, clean, chopgrad)
    optimizer.zero_grad(set_to_none=True)
    losses["total"].backward()
    optimizer.step()


def case_main(scenario_name: str, case_json: str) -> None:
    from chopgrad_core.config import ChopGradConfig

    scenario = SCENARIOS[scenario_name]
    case = Case(**json.loads(case_json))
    device, cuda = scenario["device"], scenario["device"] == "cuda"
    if not cuda:
        torch.set_num_threads(1)
        torch.set_flush_denormal(True)  # random-weight decoders drift into denormals
    model, head = build(scenario, case.head)
    dtype = getattr(torch, scenario["dtype"])
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    g = torch.Generator().manual_seed(0)
    h, w = scenario["hw"]
    clean = torch.rand(1, 3, scenario["frames"], h, w, generator=g) * 2 - 1
    sample = head.degrade(clean, g).to(device)
    sample.baseline, sample.input = sample.baseline.to(dtype), sample.input.to(dtype)
    clean = clean.to(device=device, dtype=dtype)
    chopgrad = ChopGradConfig(loss="mse", **case.chopgrad)
    n = sum(p.numel() for p in model.transformer.parameters())
    note = f"transformer {n / 1e6:.1f} M params" if n >= 1e6 else f"transformer {n / 1e3:.0f} k params"

    def sync():
        if cuda:
            torch.cuda.synchronize()

    try:
        one_step(model, head, sample, clean, chopgrad, optimizer)  # warm-up: cudnn autotuning, AdamW state
        sync()
        if cuda:
            torch.cuda.empty_cache()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        else:
            import psutil

            base = psutil.Process().memory_info().rss
        t0 = time.perf_counter()
        for _ in range(scenario["steps"]):
            one_step(model, head, sample, clean, chopgrad, optimizer)
        sync()
        seconds = (time.perf_counter() - t0) / scenario["steps"]
    except torch.OutOfMemoryError:
        print(json.dumps(asdict(Row(case.head, case.name, None, None, "out of memory"))))
        return
    if cuda:
        peak = (torch.cuda.max_memory_allocated() - base) / GIB
    else:  # ru_maxrss includes the warm-up step, so it bounds the steps' peak from above
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base) / GIB
    print(json.dumps(asdict(Row(case.head, case.name, seconds, peak, note))))


def measure_subprocess(scenario: str, case: Case, timeout: float) -> Row:
    cmd = [sys.executable, __file__, "--scenario", scenario, "--case", json.dumps(asdict(case))]
    # CPU: serve large allocations with mmap so freed tensors go back to the OS (see chopgrad_memory.py).
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return Row(case.head, case.name, None, None, f"timed out after {timeout:.0f} s")
    lines = [ln for ln in out.stdout.strip().splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        err = out.stderr.strip()
        oom = "out of memory" in err.lower() or "OutOfMemoryError" in err
        return Row(case.head, case.name, None, None, "out of memory" if oom else "failed: " + err[-200:])
    return Row(**json.loads(lines[-1]))


def fmt_row(r: Row) -> str:
    sec = f"{r.seconds:.2f} s" if r.seconds is not None else "-"
    peak = f"{r.peak_gib:.2f} GiB" if r.peak_gib is not None else "-"
    return f"| {r.head} | {r.case} | {sec} | {peak} | {r.note} |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", default="cpu-small", choices=sorted(SCENARIOS))
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--case-timeout", type=float, default=None, help="seconds before a case is given up "
                    "(default: the scenario's)")
    ap.add_argument("--case", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        return case_main(args.scenario, args.case)

    scenario = SCENARIOS[args.scenario]
    device = (torch.cuda.get_device_name().replace(" ", "-") if scenario["device"] == "cuda"
              else cpu_model().split()[0].lower() + "-cpu")
    rows = []
    print("| head | case | step time | peak | note |\n|---|---|---|---|---|", flush=True)
    for head, name, kw in scenario["cases"]:
        rows.append(measure_subprocess(args.scenario, Case(head, name, kw), args.case_timeout or scenario["timeout"]))
        print(fmt_row(rows[-1]), flush=True)
    h, w = scenario["hw"]
    table = (f"### heads_step {args.scenario} on {device}, {h}x{w}, {scenario['frames']} frames, {scenario['dtype']}, "
             f"torch {torch.__version__}, {dt.date.today().isoformat()}\n\n"
             f"chopgrad = sliding D=0 + recompute + micro_batch 1; chopgrad-D1 = sliding D=1 + recompute; "
             f"full = autograd through every decoder group. Peak above models, optimizer state and inputs.\n\n"
             "| head | case | step time | peak | note |\n|---|---|---|---|---|\n"
             + "\n".join(fmt_row(r) for r in rows) + "\n")
    from chopgrad_core.atomic import write_text

    path = write_text(Path(args.out) / f"heads_step_{args.scenario}_{device}_{dt.date.today().isoformat()}.md", table)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
