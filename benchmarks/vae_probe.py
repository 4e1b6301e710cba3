"""How much of the layout survives a VAE? The real val frames encoded and decoded by each VAE, scored
by the layout probe of ``python -m drivegen.evaluate`` (mIoU, box recall) and by PSNR: the ceiling of
anything generated through that VAE (the "ground truth through the VAE" row of an evaluation).

    python benchmarks/vae_probe.py --store datasets/train_clips.zarr sample outputs/vae_a outputs/vae_b

``sample`` names the shipped VAE (``model.vae=sample``). The probe is the store's (made by
``python -m drivegen.evaluate`` or ``python -m drivegen.evaluate.probe``); the val split's clips of
``--datasets`` are used. Prints a table; ``--json`` writes it too. On a store of long clips the
PSNR by frame group (the causal VAE's first frame, then groups of 4 that each read the cache the
group before left) shows whether a VAE holds past the clip length it was fitted on; ``--plot``
draws it (PSNR against frame):

    python benchmarks/vae_probe.py --store outputs/long33.zarr sample outputs/vae_long --plot psnr.png
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from chopgrad_core.atomic import write_json  # noqa: E402
from drivegen.data.dataset import ClipDataset  # noqa: E402
from drivegen.evaluate.probe import score_real  # noqa: E402
from drivegen.model.probe import default_probe_path, load_probe  # noqa: E402
from drivegen.model.vae import load_vae  # noqa: E402


@torch.no_grad()
def autoencoded_frames(vae, data: ClipDataset) -> dict:
    """Every camera frame of ``data`` through ``vae`` (posterior mode; None: as they are), with the
    clip's labels: (N, ...)."""
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("images", "truth", "layout", "box_mask", "box_class",
                                                            "frame")}
    for i in range(len(data)):
        item = data[i]
        truth = item["images"]  # (T, K, 3, H, W)
        video = truth
        if vae is not None:
            z = vae.encode(truth.permute(1, 2, 0, 3, 4)).latent_dist.mode()
            video = vae.decode(z).sample.clamp(-1, 1).permute(2, 0, 1, 3, 4)  # (T, K, 3, H, W)
        parts["images"].append(video.flatten(0, 1))
        parts["truth"].append(truth.flatten(0, 1))
        parts["frame"].append(torch.arange(truth.shape[0]).repeat_interleave(truth.shape[1]))
        for k in ("layout", "box_mask", "box_class"):
            parts[k].append(item[k].flatten(0, 1))
    out = {k: torch.cat(v) for k, v in parts.items()}
    out["n"] = len(out["images"])
    return out


def psnr_by_frame(frames: dict) -> list[float]:
    """PSNR (pixels in [0, 1]) of each frame index over the clips and cameras."""
    err = ((frames["images"] - frames["truth"]) / 2).pow(2).flatten(1).mean(1)
    idx = frames["frame"]
    return [float(-10 * torch.log10(err[idx == t].mean())) for t in range(int(idx.max()) + 1)]


def group_mean(per_frame: list[float]) -> list[float]:
    """Mean PSNR of the causal VAE's frame groups: frame 0, then frames 1-4, 5-8, ..."""
    groups = [per_frame[:1]] + [per_frame[i:i + 4] for i in range(1, len(per_frame), 4)]
    return [sum(g) / len(g) for g in groups]


def plot(path: str, rows: list[dict], store: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    for r in rows:
        ax.plot(range(len(r["psnr_by_frame"])), r["psnr_by_frame"], marker=".", label=r["vae"])
    ax.set_xlabel("frame")
    ax.set_ylabel("PSNR (dB), val frames")
    ax.set_title(f"reconstruction by frame: {Path(store).name}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("vaes", nargs="+", help="VAE folders (diffusers AutoencoderKLWan), or 'sample'")
    p.add_argument("--store", default="datasets/train_clips.zarr")
    p.add_argument("--datasets", nargs="+", default=["nuscenes"])
    p.add_argument("--probe", default=None, help="probe file (default: the store's, <store>.probe.safetensors)")
    p.add_argument("--min-box-pixels", type=int, default=8)
    p.add_argument("--json", default=None)
    p.add_argument("--plot", default=None, help="PNG of PSNR against frame, one line per VAE")
    args = p.parse_args(argv)
    probe, _ = load_probe(args.probe or default_probe_path(args.store))
    data = ClipDataset(args.store, split="val", datasets=args.datasets)
    rows = []
    truth = autoencoded_frames(None, data)
    s = score_real(probe, truth, args.min_box_pixels)
    print(f"real val frames: mIoU {s['miou']:.3f}, box recall {s['box_recall']:.3f} (the probe's ceiling)", flush=True)
    for name in args.vaes:
        t0 = time.perf_counter()
        vae = load_vae(name, key="vae")
        frames = autoencoded_frames(vae, data)
        s = score_real(probe, frames, args.min_box_pixels)
        mse = ((frames["images"] - frames["truth"]) / 2).pow(2).mean()  # pixels in [0, 1]
        cfg = vae.config
        rows.append({"vae": name, "miou": s["miou"], "box_recall": s["box_recall"], "psnr": float(-10 * torch.log10(mse)),
                     "spatial": cfg.scale_factor_spatial, "base_dim": cfg.base_dim, "z_dim": cfg.z_dim,
                     "params": sum(q.numel() for q in vae.parameters()), "frames": frames["n"],
                     "psnr_by_frame": psnr_by_frame(frames),
                     "seconds": round(time.perf_counter() - t0, 1)})
        groups = " / ".join(f"{g:.1f}" for g in group_mean(rows[-1]["psnr_by_frame"]))
        print(f"{name}: mIoU {s['miou']:.3f}, box recall {s['box_recall']:.3f}, PSNR {rows[-1]['psnr']:.2f} "
              f"(by frame group: {groups})", flush=True)
    print(f"\n| VAE | spatial | base_dim | z | params | mIoU | box recall | PSNR | PSNR by frame group |"
          f"\n|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        groups = " / ".join(f"{g:.1f}" for g in group_mean(r["psnr_by_frame"]))
        print(f"| {r['vae']} | {r['spatial']}x | {r['base_dim']} | {r['z_dim']} | {r['params'] / 1e3:.0f}k | "
              f"{r['miou']:.3f} | {r['box_recall']:.3f} | {r['psnr']:.2f} | {groups} |")
    if args.plot and rows:
        plot(args.plot, rows, args.store)
    if args.json:
        write_json(args.json, {"store": args.store, "val_frames": rows[0]["frames"] if rows else 0, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
