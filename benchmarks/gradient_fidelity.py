"""How close is ChopGrad's truncated gradient to full backprop? Cosine and relative error per window.

For each decoder, the L1 pixel loss of ``cg.pixel_loss(decoder, z, target, mode=..., window=...)``
is back-propagated and its gradient compared with plain autograd through ``vae.decode(z).sample``
(the reference: every frame group reaches every earlier one), with respect to the latents ``z``
and to the decoder's parameters (``cg.wrap(vae).parameters()``, concatenated). Windows: sliding
D = 0..4 and block k = 1..4, plus the window covering the video (sliding D = G-1, block k = G; G =
latent frame groups) as an exactness check. Metrics: cosine similarity and relative error
||g - g_full|| / ||g_full||, per seed; the tables give the mean and the range over seeds.

Decoders:

- ``random``: ``chopgrad_core.tiny.tiny_wan21()`` (random init, seed 0), random latents (N(0, 1))
  and random targets (U[-1, 1]); the seed draws the latents and targets.
- ``trained``: the decoder of a training run's checkpoint (``make train``'s: the fitted sample
  VAE, fine-tuned further when ``model.train_decoder`` is on; ``--checkpoint``,
  default ``outputs/train``: ``drivegen.model.checkpoint.find_latest(run)/vae/``, a diffusers
  AutoencoderKLWan folder). Targets are real frames of the run's clip store (the path in the
  checkpoint's config, read with ``drivegen.data.dataset.ClipDataset``): the store's consecutive
  clips of one log joined into ``frames`` frames; latents are the checkpoint VAE's encoding of
  them (``latent_dist.mode()``, what the decoder is trained to decode). The seed picks the log
  and cameras.
- ``wan21``: a full-size Wan 2.1 VAE from a local diffusers folder (``--wan-vae PATH``; none
  ships), on the same real frames (random ones without a checkpoint). GPU only: a CPU run skips
  it with a note. A folder without ``config.json`` is an error naming ``--wan-vae``.

Named scenarios (``--scenario``):

- ``cpu-small``: ``random`` and ``trained``, 33 frames (9 latent frames = 9 groups) at 32x56
  (the store's 64x112 frames average-pooled 2x2: half the embedded default's size, for 2 shared
  cores), 1 camera, float32, seeds 0, 1, 2.
- ``gpu``: the same plus ``wan21`` (``--wan-vae``), on CUDA in float32.

Writes ``benchmarks/results/gradient_fidelity_<scenario>_<device>_<date>.{md,json}`` and the plot
``benchmarks/gradient_fidelity_<scenario>.png`` (cosine against D and k, one line per decoder;
latents and parameters).

    python benchmarks/gradient_fidelity.py --scenario cpu-small --checkpoint outputs/train
    python benchmarks/gradient_fidelity.py --scenario gpu --wan-vae /weights/Wan2.1-T2V-1.3B-Diffusers/vae
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy  # noqa: F401  (before torch.set_flush_denormal: numpy warns when imported after it)
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import chopgrad_core as cg  # noqa: E402
from chopgrad_core.atomic import atomic_path, write_json, write_text  # noqa: E402

HERE = Path(__file__).resolve().parent
SLIDING = (0, 1, 2, 3, 4)
BLOCK = (1, 2, 3, 4)


@dataclass(frozen=True)
class Scenario:
    decoders: tuple[str, ...]
    frames: int
    hw: tuple[int, int]
    cameras: int
    seeds: tuple[int, ...]
    device: str


SCENARIOS = {
    "cpu-small": Scenario(("random", "trained"), 33, (32, 56), 1, (0, 1, 2), "cpu"),
    "gpu": Scenario(("random", "trained", "wan21"), 33, (64, 112), 2, (0, 1, 2), "cuda"),
}


@dataclass
class Row:
    decoder: str
    seed: int
    mode: str
    window: int
    exact: bool  # the window covers the video (D >= G-1, k >= G)
    cos_latents: float
    rel_latents: float
    cos_params: float
    rel_params: float
    seconds: float


@dataclass
class Setup:
    decoder: str
    note: str
    seeds: list[int] = field(default_factory=list)
    groups: int = 0
    params: int = 0
    sources: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Measurement


def gradients(vae, z: torch.Tensor, target: torch.Tensor, mode: str, window: int = 0):
    """(gradient wrt z, gradient wrt the decoder's parameters, seconds) of the L1 pixel loss;
    ``mode="reference"``: plain autograd through ``vae.decode``."""
    params = cg.wrap(vae).parameters()
    for p in params:
        p.grad = None
    zz = z.detach().clone().requires_grad_()
    t0 = time.perf_counter()
    if mode == "reference":
        loss = F.l1_loss(vae.decode(zz).sample, target)
    else:
        loss = cg.pixel_loss(vae, zz, target, loss="l1", mode=mode, window=window)
    loss.backward()
    if z.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    g_params = torch.cat([p.grad.flatten() if p.grad is not None else torch.zeros_like(p).flatten() for p in params])
    for p in params:
        p.grad = None
    return zz.grad.detach().flatten().double(), g_params.detach().double(), seconds


def compare(g: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """(cosine similarity, relative error) of ``g`` against ``ref``."""
    cos = float(torch.dot(g, ref) / (g.norm() * ref.norm()).clamp_min(1e-300))
    return cos, float((g - ref).norm() / ref.norm().clamp_min(1e-300))


def windows(groups: int) -> list[tuple[str, int]]:
    cases = [("sliding", d) for d in SLIDING] + [("block", k) for k in BLOCK]
    if groups - 1 > max(SLIDING):
        cases.append(("sliding", groups - 1))
    if groups > max(BLOCK):
        cases.append(("block", groups))
    return cases


def measure(vae, z: torch.Tensor, target: torch.Tensor, decoder: str = "", seed: int = 0,
            cases: list[tuple[str, int]] | None = None) -> list[Row]:
    """One row per (mode, window): the truncated gradient against full backprop. The decoder's
    parameters require grad during the call (and not after); the rest of the VAE never does."""
    vae.requires_grad_(False)
    params = cg.wrap(vae).parameters()
    groups = len(cg.wrap(vae).groups(z.shape[2]))
    for p in params:
        p.requires_grad_(True)
    try:
        ref_z, ref_p, _ = gradients(vae, z, target, "reference")
        rows = []
        for mode, window in cases if cases is not None else windows(groups):
            g_z, g_p, seconds = gradients(vae, z, target, mode, window)
            exact = window >= (groups - 1 if mode == "sliding" else groups)
            rows.append(Row(decoder, seed, mode, window, exact, *compare(g_z, ref_z), *compare(g_p, ref_p), seconds))
        return rows
    finally:
        vae.requires_grad_(False)


# ---------------------------------------------------------------------------------------------
# Decoders and inputs


def latent_frames(frames: int) -> int:
    if (frames - 1) % 4:
        raise SystemExit(f"--frames {frames}: Wan decodes T latent frames to 1 + 4(T-1) frames (5, 9, 17, 33, ...)")
    return 1 + (frames - 1) // 4


def random_inputs(vae, frames: int, hw, cameras: int, seed: int, device):
    g = torch.Generator().manual_seed(seed)
    dec = cg.wrap(vae)
    s = dec.spatial_scale
    z = torch.randn(cameras, dec.latent_channels, latent_frames(frames), hw[0] // s, hw[1] // s, generator=g)
    target = torch.rand(dec.frames_shape(z), generator=g) * 2 - 1
    return z.to(device), target.to(device)


def load_checkpoint_vae(run: str):
    """(vae, config, folder) of the newest checkpoint under the run folder ``run``."""
    from diffusers import AutoencoderKLWan

    from drivegen.model.checkpoint import find_latest, read_metadata

    folder = find_latest(run)
    if folder is None:
        raise SystemExit(f"--checkpoint {run!r} holds no complete checkpoint-<step>/ folder; run `make train` "
                         "(writes outputs/train) or `python -m drivegen.train trainer.out=...` first")
    if not (folder / "vae" / "config.json").is_file():
        raise SystemExit(f"--checkpoint {run!r}: {str(folder)!r} has no vae/ (the run did not fine-tune a decoder)")
    config = json.loads(read_metadata(folder / "model.safetensors")["config"])
    vae = AutoencoderKLWan.from_pretrained(folder / "vae", local_files_only=True).eval().requires_grad_(False)
    return vae, config, folder


def real_videos(config: dict, frames: int) -> list[tuple[str, list[str], torch.Tensor]]:
    """(log, camera names, video (K, 3, frames, H, W) in [-1, 1]) per log of the run's store whose
    consecutive stored clips hold at least ``frames`` frames."""
    from drivegen.data.dataset import ClipDataset

    data = config["data"]
    ds = ClipDataset(data["store"], datasets=data.get("datasets"))
    by_log: dict[str, list[tuple[int, int]]] = {}
    for i in range(len(ds)):
        meta = ds.metadata(i)
        if meta.get("has_images", True):
            by_log.setdefault(meta["log"], []).append((int(meta["start_frame"]), i))
    videos = []
    for log, items in sorted(by_log.items()):
        items.sort()
        parts, next_start = [], None
        for start, i in items:
            if next_start is not None and start != next_start:
                break  # a gap: keep the leading run of consecutive clips
            images = ds[i]["images"]  # (T, K, 3, H, W)
            parts.append(images)
            next_start = start + images.shape[0]
            if next_start - items[0][0] >= frames:
                break
        video = torch.cat(parts)[:frames] if parts else None
        if video is not None and video.shape[0] == frames:
            videos.append((log, list(ds.cameras), video.permute(1, 2, 0, 3, 4).contiguous()))
    if not videos:
        raise SystemExit(f"the store {data['store']!r} has no log with {frames} consecutive frames; use fewer --frames")
    return videos


def real_inputs(vae, videos, cameras: int, seed: int, device, hw):
    """Seed ``seed`` takes log ``seed mod logs`` and ``cameras`` of its cameras from a seeded draw."""
    log, names, video = videos[seed % len(videos)]
    g = torch.Generator().manual_seed(seed)
    pick = sorted(torch.randperm(video.shape[0], generator=g)[:cameras].tolist())
    target = video[pick]
    if tuple(target.shape[-2:]) != tuple(hw):  # the store's size, average-pooled down to the scenario's
        f = target.shape[-2] // hw[0]
        if f < 1 or target.shape[-2] != f * hw[0] or target.shape[-1] != f * hw[1]:
            raise SystemExit(f"the store's frames ({tuple(target.shape[-2:])}) do not pool to {tuple(hw)}")
        target = F.avg_pool3d(target, (1, f, f))
    target = target.to(device)
    with torch.no_grad():
        z = vae.encode(target).latent_dist.mode()
    return z, target, f"seed {seed}: {log} {', '.join(names[i] for i in pick)}"


# ---------------------------------------------------------------------------------------------
# Report


def summarise(rows: list[Row]) -> list[dict]:
    """Mean, min and max over seeds per (decoder, mode, window)."""
    keys = list(dict.fromkeys((r.decoder, r.mode, r.window) for r in rows))
    out = []
    for key in keys:
        sel = [r for r in rows if (r.decoder, r.mode, r.window) == key]
        entry = dict(decoder=key[0], mode=key[1], window=key[2], exact=sel[0].exact, seeds=len(sel))
        for m in ("cos_latents", "rel_latents", "cos_params", "rel_params", "seconds"):
            vals = [getattr(r, m) for r in sel]
            entry[m] = dict(mean=sum(vals) / len(vals), min=min(vals), max=max(vals))
        out.append(entry)
    return out


def _cell(stat: dict, fmt: str) -> str:
    if stat["max"] - stat["min"] <= 5e-4 * max(1.0, abs(stat["mean"])):
        return format(stat["mean"], fmt)
    return f"{format(stat['mean'], fmt)} ({format(stat['min'], fmt)}-{format(stat['max'], fmt)})"


def render(summary: list[dict], setups: list[Setup], scenario: str, device: str, s: Scenario) -> str:
    lines = [f"### gradient_fidelity {scenario} on {device}, {s.frames} frames at {s.hw[0]}x{s.hw[1]}, "
             f"{s.cameras} cameras, float32, torch {torch.__version__}, {dt.date.today().isoformat()}", ""]
    for st in setups:
        lines.append(f"- `{st.decoder}`: {st.note}" + (f"; {st.groups} groups, {st.params:,} decoder parameters, "
                                                       f"seeds {st.seeds}" if st.groups else ""))
        lines += [f"  - {src}" for src in st.sources]
    lines += ["", "Mean over seeds (range in brackets where it is wider than the printed digits); relative error "
              "= ||g - g_full|| / ||g_full||; `*`: the window covers the video (exact).", "",
              "| decoder | mode | window | cosine, latents | rel. error, latents | cosine, parameters | "
              "rel. error, parameters | seconds |", "|---|---|---|---|---|---|---|---|"]
    for e in summary:
        w = f"{'D' if e['mode'] == 'sliding' else 'k'}={e['window']}{' *' if e['exact'] else ''}"
        lines.append(f"| {e['decoder']} | {e['mode']} | {w} | {_cell(e['cos_latents'], '.4f')} | "
                     f"{_cell(e['rel_latents'], '.3g')} | {_cell(e['cos_params'], '.4f')} | "
                     f"{_cell(e['rel_params'], '.3g')} | {e['seconds']['mean']:.2f} |")
    return "\n".join(lines) + "\n"


def plot(summary: list[dict], png: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    decoders = list(dict.fromkeys(e["decoder"] for e in summary))
    colors = dict(zip(decoders, ("tab:blue", "tab:orange", "tab:green", "tab:red")))
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), sharey="row")
    for row, (metric, what) in enumerate((("cos_latents", "latents"), ("cos_params", "decoder parameters"))):
        for col, (mode, sym, xs) in enumerate((("sliding", "D", SLIDING), ("block", "k", BLOCK))):
            ax = axes[row, col]
            for d in decoders:
                pts = [e for e in summary if e["decoder"] == d and e["mode"] == mode and e["window"] in xs]
                x = [e["window"] for e in pts]
                mean = [e[metric]["mean"] for e in pts]
                lo = [e[metric]["mean"] - e[metric]["min"] for e in pts]
                hi = [e[metric]["max"] - e[metric]["mean"] for e in pts]
                groups = max(e["window"] + (1 if mode == "sliding" else 0) for e in summary if e["decoder"] == d
                             and e["mode"] == mode and e["exact"]) if any(e["decoder"] == d and e["mode"] == mode
                                                                        and e["exact"] for e in summary) else None
                label = d + (f" (G={groups})" if groups else "")
                ax.errorbar(x, mean, yerr=[lo, hi], fmt="o-", color=colors[d], label=label, capsize=3)
            ax.axhline(1.0, color="gray", lw=0.8, ls=":")
            ax.set_xticks(list(xs))
            ax.set_xlabel(f"{mode} window {sym}" + (" (earlier groups)" if mode == "sliding" else " (groups per block)"))
            ax.set_title(f"{mode}: gradient wrt {what}", fontsize=10)
            ax.grid(alpha=0.3)
        axes[row, 0].set_ylabel(f"cosine to full backprop ({what})")
    axes[0, 0].legend(fontsize=8, loc="lower right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", default="cpu-small", choices=sorted(SCENARIOS))
    ap.add_argument("--checkpoint", default="outputs/train",
                    help="training run folder (its newest checkpoint-<step>/vae/ is the trained decoder)")
    ap.add_argument("--wan-vae", default=None, help="local diffusers AutoencoderKLWan folder of a full-size Wan 2.1 VAE")
    ap.add_argument("--frames", type=int, default=None, help="override the scenario's frame count (1 + 4k)")
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="override the scenario's seeds")
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--plot", default=None, help="PNG path (default benchmarks/gradient_fidelity_<scenario>.png)")
    args = ap.parse_args(argv)
    s = SCENARIOS[args.scenario]
    if args.frames is not None:
        s = Scenario(s.decoders, args.frames, s.hw, s.cameras, s.seeds, s.device)
    if args.seeds is not None:
        s = Scenario(s.decoders, s.frames, s.hw, s.cameras, tuple(args.seeds), s.device)
    latent_frames(s.frames)
    if args.wan_vae is not None and not (Path(args.wan_vae).expanduser() / "config.json").is_file():
        ap.error(f"--wan-vae {args.wan_vae!r}: no config.json there; point --wan-vae at a local diffusers "
                 "AutoencoderKLWan folder (a Wan 2.1 checkpoint's vae/); nothing is downloaded")
    if s.device == "cuda" and not torch.cuda.is_available():
        ap.error(f"--scenario {args.scenario} needs CUDA; use --scenario cpu-small on this machine")
    if "wan21" in s.decoders and args.wan_vae is None:
        ap.error(f"--scenario {args.scenario} measures a full-size Wan 2.1 VAE: give --wan-vae PATH")
    device = s.device
    if device == "cpu":
        torch.set_flush_denormal(True)
        device_name = "cpu"
        if args.wan_vae is not None:
            print(f"note: --wan-vae {args.wan_vae} skipped: the full-size Wan 2.1 VAE is measured on a GPU "
                  "(--scenario gpu)", flush=True)
    else:
        device_name = torch.cuda.get_device_name().replace(" ", "-")
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False

    rows: list[Row] = []
    setups: list[Setup] = []
    videos = None

    def run(name: str, vae, inputs, note: str) -> None:
        vae = vae.to(device).float().eval()
        setup = Setup(name, note, params=sum(p.numel() for p in cg.wrap(vae).parameters()))
        for seed in s.seeds:
            z, target, source = inputs(vae, seed)
            setup.groups = len(cg.wrap(vae).groups(z.shape[2]))
            setup.seeds.append(seed)
            if source:
                setup.sources.append(source)
            t0 = time.perf_counter()
            new = measure(vae, z, target, name, seed)
            rows.extend(new)
            print(f"{name} seed {seed}: {len(new)} windows in {time.perf_counter() - t0:.1f} s; "
                  + ", ".join(f"{r.mode[0]}{r.window} {r.cos_latents:.4f}/{r.cos_params:.4f}" for r in new), flush=True)
        setups.append(setup)

    if "random" in s.decoders:
        from chopgrad_core.tiny import tiny_wan21

        run("random", tiny_wan21(),
            lambda vae, seed: (*random_inputs(vae, s.frames, s.hw, s.cameras, seed, device), ""),
            "`chopgrad_core.tiny.tiny_wan21()` (random init, torch seed 0), latents N(0, 1), targets U[-1, 1] "
            "(drawn from the seed)")
    if "trained" in s.decoders:
        vae, config, folder = load_checkpoint_vae(args.checkpoint)
        videos = real_videos(config, s.frames)
        steps = config.get("trainer", {}).get("steps")
        run("trained", vae, lambda vae, seed: real_inputs(vae, videos, s.cameras, seed, device, s.hw),
            f"the decoder of `{folder}` ({steps} training steps; `make train`'s tiny Wan 2.1 VAE, decoder fine-tuned "
            f"by the ChopGrad pixel loss `chopgrad.mode={config.get('chopgrad', {}).get('mode')}` "
            f"`window={config.get('chopgrad', {}).get('window')}`), real frames of `{config['data']['store']}` "
            f"({s.frames} consecutive frames of one log, pooled to {s.hw[0]}x{s.hw[1]} where smaller), "
            "latents = its encoder's mode")
    if "wan21" in s.decoders:
        from diffusers import AutoencoderKLWan

        vae = AutoencoderKLWan.from_pretrained(Path(args.wan_vae).expanduser(), local_files_only=True)
        if videos is not None:
            run("wan21", vae, lambda vae, seed: real_inputs(vae, videos, s.cameras, seed, device, s.hw),
                f"full-size Wan 2.1 VAE from `{args.wan_vae}`, the same real frames, latents = its encoder's mode")
        else:
            run("wan21", vae, lambda vae, seed: (*random_inputs(vae, s.frames, s.hw, s.cameras, seed, device), ""),
                f"full-size Wan 2.1 VAE from `{args.wan_vae}`, random latents and targets")

    summary = summarise(rows)
    table = render(summary, setups, args.scenario, device_name, s)
    print(table)
    date = dt.date.today().isoformat()
    path = Path(args.out) / f"gradient_fidelity_{args.scenario}_{device_name}_{date}.md"
    write_text(path, table)
    write_json(path.with_suffix(".json"), dict(
        scenario=args.scenario, device=device_name, torch=torch.__version__, date=date, frames=s.frames,
        hw=list(s.hw), cameras=s.cameras, seeds=list(s.seeds), dtype="float32", argv=sys.argv[1:],
        setups=[asdict(x) for x in setups], summary=summary, rows=[asdict(r) for r in rows]))
    png = Path(args.plot) if args.plot else HERE / f"gradient_fidelity_{args.scenario}.png"
    plot(summary, png, f"ChopGrad gradient fidelity ({args.scenario}, {device_name}): {s.frames} frames at "
                       f"{s.hw[0]}x{s.hw[1]}, {s.cameras} cameras, L1, mean and range over seeds {list(s.seeds)}")
    print(f"wrote {path}, {path.with_suffix('.json')} and {png}")


if __name__ == "__main__":
    main()
