"""Fit a VAE as an autoencoder on a clip store's training frames: the embedded default's VAE.

The embedded default has no pretrained Wan VAE (nothing is downloaded), and a randomly initialised
one cannot be left random: its decoder then draws the mean picture whatever latents it is given,
so no generated frame can follow its controls (measured: after 150 training steps the generated
frames were the same sky-over-road gradient for every clip). Real systems start from a pretrained
VAE; this fits one on the frames of a store's train split (never val), with an L1 + MSE
reconstruction loss and a small KL term:

    python -m drivegen.model.fit_vae --store datasets/train_clips.zarr --out outputs/vae --steps 600
    python -m drivegen.train model.vae=outputs/vae

``--store`` takes several stores (their train splits are pooled: more scenes, not more steps, is
what lowers a small VAE's val error), and ``--spatial 4`` fits a VAE with two spatial
downsamplings instead of Wan's three: at small image sizes 8x compression leaves a latent pixel
per 8x8 block, and thin things (lane paint, far agents) do not survive it; a 4x VAE keeps them at
the same decoder cost per pixel (the transformer then patches 4x4, ``model.patch_size``, to keep
its token count).

Training then uses it (``model.vae``) and saves it in every checkpoint (``vae/``), so generation
uses the same one. Cost: about 12 s a step at 6 cameras x 5 frames x 64x112 on a loaded 2-core
CPU, so hundreds of steps are a GPU job (``--device cuda``); the embedded default does not run it.
The clips' frames are read from the store once (at most ``max_clips`` of them, a seeded random
choice) and kept in memory: reading a clip from Zarr costs more than a GPU step.

Shape legend: N clips x cameras, C channels, T frames, H W image size.
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F

from chopgrad_core.progress import progress

__all__ = ["fit_vae"]


def fit_vae(vae, data, steps: int, lr: float = 2e-3, seed: int = 0, batch_clips: int = 1,
            kl_weight: float = 1e-6, device: torch.device | str = "cpu", show: bool = True,
            max_clips: int = 512, max_seconds: float | None = None, edge_weight: float = 0.0,
            warmup_steps: int | None = None) -> dict[str, float]:
    """Fit ``vae`` (encoder and decoder) to reconstruct the clips of ``data`` (a ClipDataset with
    images, or a list of them, pooled) for ``steps`` AdamW steps; leaves it in eval mode without
    gradients. Returns the mean L1 (pixels in [-1, 1]) of the first and last tenth of the steps, the steps done and the seconds
    taken; ``max_seconds`` stops the fit early (the learning rate's decay follows the clock then).
    ``edge_weight`` adds an L1 loss on the frames' horizontal and vertical differences (the gradient
    difference loss of Mathieu et al., 2016): L1 + MSE alone trade thin lines for blur.
    ``warmup_steps`` (default: a tenth of the steps, at most 100) ramps the learning rate up
    linearly: AdamW starts without moment estimates, and a continued fit (``--init``) at full rate
    undoes itself in its first steps (measured: L1 0.023 -> 0.54 in 2 steps at 2e-3)."""
    gen = torch.Generator().manual_seed(seed)
    parts = list(data) if isinstance(data, (list, tuple)) else [data]
    items = [(d, i) for d in parts for i in range(len(d))]
    chosen = torch.randperm(len(items), generator=gen)[:max_clips].tolist()
    # (T, K, 3, H, W) per clip -> (K, 3, T, H, W), read once and kept on the device
    clips = [items[j][0].images(items[j][1]).permute(1, 2, 0, 3, 4).contiguous().to(device) for j in
             progress(chosen, desc="read clips", unit="clip", disable=not show)]
    vae.to(device).train().requires_grad_(True)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    l1s: list[float] = []
    t0 = time.perf_counter()
    warmup = min(100, steps // 10) if warmup_steps is None else warmup_steps

    def set_lr() -> None:
        # Cosine decay to a tenth over the fit (most of it happens early, the tail polishes edges);
        # with a time limit, over whichever of steps and time runs out first, so a fit stopped by
        # the clock still ends at the small learning rate.
        done = len(l1s) / steps
        if max_seconds:
            done = max(done, (time.perf_counter() - t0) / max_seconds)
        ramp = min(1.0, (len(l1s) + 1) / warmup) if warmup > 0 else 1.0
        for group in opt.param_groups:
            group["lr"] = ramp * lr * (0.1 + 0.45 * (1 + math.cos(math.pi * min(done, 1.0))))

    bar = progress(range(steps), desc="fit vae", unit="step", disable=not show)
    for _ in bar:
        set_lr()
        idx = torch.randint(len(clips), (batch_clips,), generator=gen).tolist()
        x = torch.cat([clips[i] for i in idx])  # (N = clips x K, 3, T, H, W)
        post = vae.encode(x).latent_dist
        z = post.sample(generator=None)
        recon = vae.decode(z).sample
        l1 = F.l1_loss(recon, x)
        kl = post.kl().mean() / x[0].numel()
        loss = l1 + F.mse_loss(recon, x) + kl_weight * kl
        if edge_weight:
            loss = loss + edge_weight * (F.l1_loss(recon.diff(dim=-1), x.diff(dim=-1))
                                         + F.l1_loss(recon.diff(dim=-2), x.diff(dim=-2)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        l1s.append(float(l1.detach()))
        bar.set_postfix(l1=f"{l1s[-1]:.4f}")
        if max_seconds is not None and time.perf_counter() - t0 > max_seconds:
            break
    vae.eval().requires_grad_(False)
    tenth = max(1, len(l1s) // 10)
    return {"l1_first": sum(l1s[:tenth]) / tenth, "l1_last": sum(l1s[-tenth:]) / tenth, "steps": len(l1s),
            "seconds": round(time.perf_counter() - t0, 1)}


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    from diffusers import AutoencoderKLWan

    from drivegen.data.dataset import ClipDataset
    from drivegen.errors import DrivegenError

    p = argparse.ArgumentParser(description="Fit a tiny Wan VAE to a clip store's training frames.")
    p.add_argument("--store", nargs="+", default=["datasets/train_clips.zarr"],
                   help="clip stores (python -m drivegen.preprocess); their train splits are pooled")
    p.add_argument("--out", default="outputs/vae", help="folder for the fitted VAE (diffusers layout)")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--base-dim", type=int, default=8, help="width of the VAE (Wan's base_dim)")
    p.add_argument("--init", default=None, help="continue fitting this VAE folder (its sizes; --base-dim and "
                   "--z-dim are then ignored)")
    p.add_argument("--z-dim", type=int, default=16, help="latent channels (model.latent_channels must match)")
    p.add_argument("--spatial", type=int, choices=(4, 8), default=8,
                   help="spatial compression: 8 (Wan's three downsamplings) or 4 (two; see the module doc)")
    p.add_argument("--batch-clips", type=int, default=1)
    p.add_argument("--datasets", nargs="+", default=["nuscenes"], help="source datasets of the clips (one rig)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--max-minutes", type=float, default=None, help="stop the fit after this long (and save it)")
    p.add_argument("--edge-weight", type=float, default=0.0,
                   help="weight of an L1 loss on horizontal and vertical pixel differences (sharper edges)")
    p.add_argument("--warmup-steps", type=int, default=None,
                   help="linear learning-rate warm-up (default: a tenth of --steps, at most 100)")
    args = p.parse_args(argv)
    try:
        if min(args.steps, args.base_dim, args.z_dim, args.batch_clips) < 1 or args.lr <= 0:
            raise DrivegenError("--steps, --lr, --base-dim, --z-dim and --batch-clips must be positive")
        data = [ClipDataset(store, datasets=args.datasets, split="train") for store in args.store]
        torch.manual_seed(args.seed)
        if args.init:
            from drivegen.model.vae import load_vae

            vae = load_vae(args.init, key="--init")
        else:
            stages = 3 if args.spatial == 8 else 2  # downsamplings, each 2x in space and (Wan's) 2x in time
            vae = AutoencoderKLWan(base_dim=args.base_dim, z_dim=args.z_dim, dim_mult=[1] * (stages + 1), num_res_blocks=1,
                                   temperal_downsample=[False, True, True][-stages:], scale_factor_spatial=args.spatial)
    except DrivegenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stats = fit_vae(vae, data, args.steps, lr=args.lr, seed=args.seed, batch_clips=args.batch_clips,
                    device=args.device, max_seconds=args.max_minutes * 60 if args.max_minutes else None,
                    edge_weight=args.edge_weight, warmup_steps=args.warmup_steps)
    from chopgrad_core.atomic import atomic_dir

    with atomic_dir(args.out) as tmp:
        vae.to("cpu").save_pretrained(tmp)
    print(f"fitted VAE in {args.out}: L1 {stats['l1_first']:.4f} -> {stats['l1_last']:.4f} in {stats['steps']} steps, {stats['seconds']} s "
          f"({sum(map(len, data))} training clips of {', '.join(args.store)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
