"""Step time and peak memory of one drivegen.train step: flow matching + ChopGrad pixel loss.

Named scenarios (``--scenario``):

- ``cpu-small``: the tiny model and VAE of the tests, 2 cameras at 32x48, 9 and 17 frames (CPU).
- ``h100``: a Wan 2.1 1.3B-sized VACE transformer (30 layers, 12 heads x 128, ffn 8960,
  text_dim 4096, control hints on every other block), random weights kept in float32 with bf16
  autocast and gradient checkpointing, AdamW (as ``drivegen.train`` runs on a GPU); the Wan 2.1 VAE
  (default config, random weights, bf16, frozen); 6 cameras at 256x448; pixel loss (L1) on every
  frame through ``chopgrad_core.pixel_loss`` in ``sliding`` mode with D=1, cameras back-propagated
  one at a time (``micro_batch=1``) with recomputation (``recompute=True``); 33 and 121 frames.
  The same step with ``mode=full`` (plain autograd through the decoder) for comparison.

What runs is ``drivegen.model.objective.losses`` (the trainer's objective) -> backward -> AdamW step, on
synthetic inputs of the right shapes (the GPU machines lack the data stack): random normalised
latents, frames, control latents, layout channels and box tokens. The first step is a warm-up;
the second is timed. Each case runs in its own process so an out-of-memory case (a valid result)
leaves nothing behind for the next.

    python benchmarks/train_step.py --scenario cpu-small
    python benchmarks/train_step.py --scenario h100

Writes ``benchmarks/results/train_step_<scenario>_<device>_<date>.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

GIB = 1024**3


@dataclass(frozen=True)
class Scenario:
    model: dict
    vae: dict
    cameras: int
    image_hw: tuple[int, int]
    frames: tuple[int, ...]
    device: str
    chopgrad: dict = field(default_factory=dict)
    modes: tuple[str, ...] = ("sliding", "full")


SCENARIOS = {
    "cpu-small": Scenario(model={}, vae=dict(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1),
                          cameras=2, image_hw=(32, 48), frames=(9, 17), device="cpu"),
    "h100": Scenario(model=dict(num_attention_heads=12, attention_head_dim=128, num_layers=30, ffn_dim=8960,
                                text_dim=4096, vace_layers=list(range(0, 30, 2))),
                     vae={}, cameras=6, image_hw=(256, 448), frames=(33, 121), device="cuda",
                     chopgrad=dict(micro_batch=1, recompute=True)),
}


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def one_case(name: str, frames: int, mode: str) -> dict:
    """Build, warm up, time one step; returns the row (or the out-of-memory verdict)."""
    from diffusers import AutoencoderKLWan

    import chopgrad_core
    from chopgrad_core.config import ChopGradConfig
    from drivegen.model.controlled_wan import ControlledWan, ModelConfig
    from drivegen.model.objective import LatentSpace, ObjectiveConfig, losses

    s = SCENARIOS[name]
    dev = s.device
    cuda = dev == "cuda"
    torch.manual_seed(0)
    if not cuda:
        torch.set_flush_denormal(True)  # random-weight decoders make denormals: 30x slower on CPU
    with torch.device(dev):  # random init on the device: a 1.3B model on the CPU takes minutes
        model = ControlledWan(ModelConfig(**s.model))
        vae = AutoencoderKLWan(**s.vae).to(torch.bfloat16 if cuda else torch.float32).eval().requires_grad_(False)
    if cuda:
        model.transformer.enable_gradient_checkpointing()
    decoder, space = chopgrad_core.wrap(vae), LatentSpace(vae)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    chop = ChopGradConfig(mode=mode, window=1, **(s.chopgrad if mode != "full" else {}))
    obj = ObjectiveConfig()

    # Synthetic batch with the trainer's shapes: (B, K, C, t, h, w) latents, (B, K, 3, T, H, W) frames.
    K, (H, W), t = s.cameras, s.image_hw, (frames - 1) // 4 + 1
    h, w, S = H // 8, W // 8, 32
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(1, K, 16, t, h, w, generator=g).to(dev)
    video = (torch.rand(1, K, 3, frames, H, W, generator=g) * 2 - 1).to(dev, vae.dtype)
    control = torch.randn(1, K, 16 + model.config.layout_channels, t, h, w, generator=g).to(dev)
    cond = dict(box_corners=torch.rand(1, K, t, S, 8, 2, device=dev), box_params=torch.rand(1, K, t, S, 10, device=dev),
                box_class=torch.randint(0, 10, (1, K, t, S), device=dev), box_mask=torch.rand(1, K, t, S, device=dev) > 0.5,
                intrinsics=torch.eye(3, device=dev).expand(1, K, 3, 3) * 200,
                cam_to_ego=torch.eye(4, device=dev).expand(1, K, 4, 4))

    def step() -> dict:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev, torch.bfloat16, enabled=cuda):
            out = losses(model, decoder, space, x0, video, control, cond, obj, chop, torch.Generator().manual_seed(2))
        out["total"].backward()
        opt.step()
        return {k: float(v) for k, v in out.items()}

    try:
        step()  # warm-up: kernels, allocator, optimizer state
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        sync(dev)
        t0 = time.perf_counter()
        values = step()
        sync(dev)
        seconds = time.perf_counter() - t0
    except torch.OutOfMemoryError:
        return dict(frames=frames, mode=mode, oom=True)
    row = dict(frames=frames, mode=mode, oom=False, step_s=round(seconds, 3), flow=values["flow"],
               pixel=values["pixel"])
    if cuda:
        row |= dict(peak_gib=round(torch.cuda.max_memory_allocated() / GIB, 2),
                    reserved_gib=round(torch.cuda.max_memory_reserved() / GIB, 2))
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", default="cpu-small", choices=sorted(SCENARIOS))
    ap.add_argument("--case", nargs=2, metavar=("FRAMES", "MODE"), help=argparse.SUPPRESS)  # child process
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    if args.case:
        print("ROW " + json.dumps(one_case(args.scenario, int(args.case[0]), args.case[1])), flush=True)
        return

    import hardware

    s = SCENARIOS[args.scenario]
    rows = []
    for frames in s.frames:
        for mode in s.modes:
            proc = subprocess.run([sys.executable, __file__, "--scenario", args.scenario, "--case", str(frames), mode],
                                  capture_output=True, text=True)
            found = [line[4:] for line in proc.stdout.splitlines() if line.startswith("ROW ")]
            row = json.loads(found[0]) if found else dict(frames=frames, mode=mode, error=proc.stderr[-400:])
            rows.append(row)
            print(row, flush=True)
    device = torch.cuda.get_device_name(0) if s.device == "cuda" else hardware.cpu_model()
    result = dict(scenario=args.scenario, device=device, torch=torch.__version__, cameras=s.cameras,
                  image_hw=list(s.image_hw), model=s.model, chopgrad=s.chopgrad, rows=rows,
                  date=dt.date.today().isoformat())
    out = Path(args.out) / f"train_step_{args.scenario}_{device.replace(' ', '-')}_{result['date']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\n{args.scenario} on {device}: {s.cameras} cameras at {s.image_hw[0]}x{s.image_hw[1]}")
    print(f"{'frames':>6} {'mode':>8} {'step s':>8} {'peak GiB':>9}")
    for r in rows:
        verdict = "out of memory" if r.get("oom") else ("error" if "error" in r else "")
        print(f"{r['frames']:>6} {r['mode']:>8} {r.get('step_s', ''):>8} {r.get('peak_gib', ''):>9} {verdict}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
