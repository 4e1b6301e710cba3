"""Seconds per generated video and peak memory: drivegen.generate's sampling and streaming decode.

Named scenarios (``--scenario``):

- ``cpu-small``: the tiny model and VAE of the tests, 2 cameras at 32x48, 17 frames, 2 steps (CPU).
- ``h100``: a Wan 2.1 1.3B-sized transformer (30 layers, 12 heads x 128, ffn 8960, text_dim 4096,
  VACE hints on every other block), random weights, bf16; the Wan 2.1 VAE (default config, random
  weights, bf16); 6 cameras at 256x448, 121 frames, generated in chunks of 33 frames (9 latent
  frames) overlapping by 1 latent frame, 4 sampler steps, guidance 1 (one model call per step).

What runs is the pipeline's steps 4 and 5 (drivegen.generate.pipeline) on synthetic conditions:
each chunk's control video is VAE-encoded as ``drivegen.train.trainer.prepare_conditions`` does,
layout channels and box tokens are random, the transformer samples the chunk continuing
from the previous one (``sample_video``), and ``chopgrad_core.decode(stream=True)`` decodes group by
group into host uint8 frames. The scene rendering (conditions/) and file writing are not timed:
they need nuscenes-devkit and imageio, which the GPU machines lack.

Memory (CUDA only): ``peak_gib`` is ``torch.cuda.max_memory_allocated`` over the whole video minus
what was allocated before (model and VAE); ``decode_peak_gib`` is the same for the streaming decode
alone, at 121 and at 33 frames: streaming makes it constant in length (target: within 5%).

    python benchmarks/generate_speed.py --scenario cpu-small
    python benchmarks/generate_speed.py --scenario h100

Writes ``benchmarks/results/generate_speed_<scenario>_<device>_<date>.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import chopgrad_core  # noqa: E402
from drivegen.model.sampler import sample_video  # noqa: E402
from drivegen.model.controlled_wan import ControlledWan, ModelConfig, pool_layout  # noqa: E402

GIB = 1024**3


@dataclass(frozen=True)
class Scenario:
    model: dict
    vae: dict
    cameras: int
    image_hw: tuple[int, int]
    frames: int
    short_frames: int  # the decode-memory comparison length
    chunk_frames: int
    overlap: int
    steps: int
    device: str
    dtype: str


SCENARIOS = {
    "cpu-small": Scenario(model={}, vae=dict(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1),
                          cameras=2, image_hw=(32, 48), frames=17, short_frames=9, chunk_frames=5, overlap=1, steps=2,
                          device="cpu", dtype="float32"),
    "h100": Scenario(model=dict(num_attention_heads=12, attention_head_dim=128, num_layers=30, ffn_dim=8960,
                                text_dim=4096, vace_layers=list(range(0, 30, 2))),
                     vae={}, cameras=6, image_hw=(256, 448), frames=121, short_frames=33, chunk_frames=33, overlap=1,
                     steps=4, device="cuda", dtype="bfloat16"),
}


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def build(s: Scenario):
    from diffusers import AutoencoderKLWan

    from drivegen.model.objective import LatentSpace

    dtype = getattr(torch, s.dtype)
    torch.manual_seed(0)
    with torch.device(s.device):  # random init straight on the device (a 1.3B model on the CPU takes minutes)
        model = ControlledWan(ModelConfig(**s.model)).to(dtype).eval().requires_grad_(False)
        vae = AutoencoderKLWan(**s.vae).to(dtype).eval().requires_grad_(False)
    return model, vae, LatentSpace(vae)


def make_inputs(s: Scenario, model, vae, space, num_latent: int):
    """inputs(start, length) as the pipeline's: the chunk's control video encoded (and, as prepare
    does today, the zero images too), layout pooled to the latent grid, box tokens, cameras."""
    dtype, dev = getattr(torch, s.dtype), s.device
    H, W = s.image_hw
    K, S, F = s.cameras, 16, 4 * (num_latent - 1) + 1
    g = torch.Generator().manual_seed(1)
    control_video = (torch.rand(K, 3, F, H, W, generator=g) * 2 - 1)  # host, like the rendered conditions
    layout = (torch.rand(1, K, F, model.config.layout_channels, H // 8, W // 8, generator=g) > 0.8).float()

    def inputs(start: int, length: int):
        frames = slice(4 * start, 4 * (start + length - 1) + 1)
        video = control_video[:, :, frames].to(dev, dtype)
        z = space.normalise(vae.encode(video).latent_dist.mode())  # (K, C, t, h, w)
        h, w = z.shape[-2:]
        pooled = pool_layout(layout[:, :, frames].to(dev), length, (h, w))
        control = torch.cat([z.unsqueeze(0), pooled.to(z)], dim=2)
        t = length
        cond = dict(box_corners=torch.rand(1, K, t, S, 8, 2, device=dev), box_params=torch.rand(1, K, t, S, 10, device=dev),
                    box_class=torch.randint(0, 10, (1, K, t, S), device=dev),
                    box_mask=torch.rand(1, K, t, S, device=dev) > 0.5,
                    intrinsics=torch.eye(3, device=dev).expand(1, K, 3, 3) * 200,
                    cam_to_ego=torch.eye(4, device=dev).expand(1, K, 4, 4))
        return control, cond

    return inputs


def decode_frames(vae, latents_KCthw: torch.Tensor, device: str) -> tuple[int, float, float]:
    """Streaming decode into host uint8 frames: (frames, seconds, peak GiB above the start)."""
    decoder = chopgrad_core.wrap(vae)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    sync(device)
    t0 = time.perf_counter()
    frames = 0
    for group in chopgrad_core.decode(decoder, latents_KCthw, stream=True):
        host = ((group.float().clamp(-1, 1) + 1) * 127.5).to(torch.uint8).cpu()  # what the mp4 writers get
        frames += host.shape[2]
        del group, host
    sync(device)
    seconds = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated() - base) / GIB if device == "cuda" else None
    return frames, seconds, peak


@dataclass
class Result:
    scenario: str
    device: str
    frames: int
    cameras: int
    image_hw: list[int]
    latent_frames: int
    chunks: int
    steps: int
    sample_s: float
    decode_s: float
    seconds_per_video: float
    peak_gib: float | None  # CUDA only
    decode_peak_gib: float | None
    decode_peak_short_gib: float | None
    short_frames: int
    decode_ratio: float | None
    torch: str
    hardware: str


def run_video(s: Scenario, model, vae, space, frames: int, steps: int):
    from drivegen.model.sampler import chunk_starts

    n = (frames - 1) // 4 + 1
    chunk = (s.chunk_frames - 1) // 4 + 1
    inputs = make_inputs(s, model, vae, space, n)
    h, w = s.image_hw[0] // 8, s.image_hw[1] // 8
    if s.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    sync(s.device)
    t0 = time.perf_counter()
    # bf16 weights under autocast, as the pipeline samples on CUDA (the condition embeddings take float32 inputs).
    with torch.autocast(s.device, torch.bfloat16, enabled=s.dtype == "bfloat16"):
        latents = sample_video(model, inputs, (1, s.cameras, space.mean.shape[1], h, w), n, s.image_hw, chunk=chunk,
                               overlap=s.overlap, steps=steps, seed=0)
    sync(s.device)
    sample_s = time.perf_counter() - t0
    sample_peak = (torch.cuda.max_memory_allocated() - base) / GIB if s.device == "cuda" else None
    z = space.denormalise(latents.flatten(0, 1).float()).to(getattr(torch, s.dtype))
    got, decode_s, decode_peak = decode_frames(vae, z, s.device)
    assert got == frames, (got, frames)
    return dict(latent_frames=n, chunks=len(chunk_starts(n, min(chunk, n), s.overlap)), sample_s=sample_s,
                decode_s=decode_s, peak=None if sample_peak is None else max(sample_peak, decode_peak), decode_peak=decode_peak,
                z=z)


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", default="cpu-small", choices=sorted(SCENARIOS))
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    s = SCENARIOS[args.scenario]
    if s.device == "cuda" and not torch.cuda.is_available():
        sys.exit(f"scenario {args.scenario} needs a CUDA GPU")
    torch.set_flush_denormal(True)  # random-weight decoders produce denormals (CPU)
    t_build = time.perf_counter()
    model, vae, space = build(s)
    print(f"built model ({sum(p.numel() for p in model.parameters()) / 1e9:.2f} B parameters) and VAE in "
          f"{time.perf_counter() - t_build:.1f} s", flush=True)
    with torch.no_grad():
        run_video(s, model, vae, space, s.chunk_frames, 1)  # warm-up: kernels, allocator
        r = run_video(s, model, vae, space, s.frames, s.steps)
        # Decode memory at the short length: the same latents' first frames, decoded alone.
        n_short = (s.short_frames - 1) // 4 + 1
        _, _, short_peak = decode_frames(vae, r["z"][:, :, :n_short].contiguous(), s.device)
    if s.device == "cuda":
        hardware = torch.cuda.get_device_name()
    else:
        from hardware import cpu_model

        hardware = cpu_model()
    result = Result(scenario=args.scenario, device=s.device, frames=s.frames, cameras=s.cameras,
                    image_hw=list(s.image_hw), latent_frames=r["latent_frames"], chunks=r["chunks"], steps=s.steps,
                    sample_s=round(r["sample_s"], 2), decode_s=round(r["decode_s"], 2),
                    seconds_per_video=round(r["sample_s"] + r["decode_s"], 2), peak_gib=_round(r["peak"]),
                    decode_peak_gib=_round(r["decode_peak"]), decode_peak_short_gib=_round(short_peak),
                    short_frames=s.short_frames,
                    decode_ratio=round(r["decode_peak"] / short_peak, 4) if short_peak else None,
                    torch=torch.__version__, hardware=hardware)
    print("| scenario | frames | cameras | chunks | steps | sample | decode | s/video | peak | decode peak "
          f"{s.frames} / {s.short_frames} frames |\n|---|---|---|---|---|---|---|---|---|---|\n"
          f"| {result.scenario} | {result.frames} | {result.cameras} | {result.chunks} | {result.steps} | "
          f"{result.sample_s} s | {result.decode_s} s | {result.seconds_per_video} s | {result.peak_gib} GiB | "
          f"{result.decode_peak_gib} / {result.decode_peak_short_gib} GiB (x{result.decode_ratio}) |")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device_name = hardware.replace(" ", "-") if s.device == "cuda" else "cpu"
    path = out / f"generate_speed_{args.scenario}_{device_name}_{dt.date.today().isoformat()}.json"
    path.write_text(json.dumps(asdict(result) | {"python": platform.python_version()}, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
