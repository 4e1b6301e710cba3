"""The training loop: batch -> forward -> flow-matching + ChopGrad pixel loss -> clip -> step -> log.

Shape legend: B batch, T frames, K cameras, C channels, t latent frames, h w latent size,
H W image size, S box slots.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict
from pathlib import Path

import shutil

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm import tqdm

import chopgrad_core
import conditions
import imageio.v2 as imageio

from drivegen.dataset import ClipDataset
from drivegen.errors import DrivegenError
from drivegen.generate.sampler import sample_latents
from drivegen.video import mosaic, to_uint8, write_mp4
from drivegen.model import ControlledWan, apply_lora, pool_layout
from drivegen.objective import LatentSpace, losses
from drivegen.train.config import TrainConfig, TrainConfigError
from drivegen.train.evaluate import control_gap


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------


def ensure_store(cfg: TrainConfig) -> Path:
    """The clip store, made from the logs (and the logs from the sample world) when missing."""
    store = Path(cfg.data.store)
    if (store / "zarr.json").is_file():
        return store
    logs = Path(cfg.data.logs)
    if not logs.exists():
        from drivegen.sample_data import generate_sample_logs

        print(f"drivegen.train: no logs at {logs}; writing the sample logs there")
        generate_sample_logs(logs)
    from drivegen import preprocess

    print(f"drivegen.train: no clip store at {store}; preprocessing {logs}")
    h, w = cfg.data.image_size
    # Composed with OmegaConf rather than preprocess.load_config: Hydra is already initialised
    # by this job's own @hydra.main and refuses a second initialisation.
    from omegaconf import OmegaConf

    yaml = OmegaConf.load(Path(preprocess.__file__).resolve().parents[1] / "configs" / "preprocess.yaml")
    pcfg = preprocess._to_dataclass(OmegaConf.merge(yaml, OmegaConf.from_dotlist([
        f"input_root={logs}", f"out={store}", f"conditions.image_size=[{h},{w}]", "conditions.bev=false",
        f"clip.length={cfg.data.clip_length}", f"clip.stride={cfg.data.clip_length}"])))
    preprocess.run(pcfg)  # prints its own progress and summary
    return store


def latent_frame_index(num_frames: int) -> torch.Tensor:
    """Pixel frame that stands for each latent frame: 0, then the last frame of each group of 4."""
    return torch.tensor([0] + [4 * t for t in range(1, (num_frames - 1) // 4 + 1)])


def _encode(vae, space: LatentSpace, video_BK3THW: torch.Tensor) -> torch.Tensor:
    b, k = video_BK3THW.shape[:2]
    z = vae.encode(video_BK3THW.flatten(0, 1)).latent_dist.mode()
    return space.normalise(z).unflatten(0, (b, k))  # (B, K, C, t, h, w)


@torch.no_grad()
def prepare_conditions(batch: dict, vae, space: LatentSpace, device: torch.device) -> tuple[torch.Tensor, dict]:
    """A ClipDataset batch -> (control, cond): what the model is conditioned on, without the
    frames' own latents (generation has no frames to encode)."""
    control_video = batch["control"].to(device).permute(0, 2, 3, 1, 4, 5)  # (B, K, 3, T, H, W)
    z = _encode(vae, space, control_video)
    layout = batch["layout"].to(device).float()  # (B, T, K, Cl, H, W) uint8 -> float
    layout[:, :, :, conditions.DEPTH_CHANNEL] /= 255.0
    keep = [c for c in range(layout.shape[3]) if c != conditions.INSTANCE_CHANNEL]
    pooled = pool_layout(layout[:, :, :, keep].permute(0, 2, 1, 3, 4, 5), z.shape[3], tuple(z.shape[-2:]))
    control = torch.cat([z, pooled], dim=2)  # (B, K, C + Cl, t, h, w)

    idx = latent_frame_index(layout.shape[1])
    def per_latent_frame(x):  # (B, T, K, ...) -> (B, K, t, ...)
        return x[:, idx].transpose(1, 2).to(device)

    cond = dict(box_corners=per_latent_frame(batch["box_corners"]), box_params=per_latent_frame(batch["box_params"]),
                box_class=per_latent_frame(batch["box_class"]), box_mask=per_latent_frame(batch["box_mask"]),
                intrinsics=batch["intrinsics"][:, 0].to(device), cam_to_ego=batch["cam_to_ego"][:, 0].to(device))
    return control, cond


@torch.no_grad()
def prepare(batch: dict, vae, space: LatentSpace, device: torch.device) -> tuple:
    """A ClipDataset batch -> (x0, frames, control, cond) as ``drivegen.objective.losses`` takes them."""
    frames = batch["images"].to(device).permute(0, 2, 3, 1, 4, 5)  # (B, T, K, 3, H, W) -> (B, K, 3, T, H, W)
    control, cond = prepare_conditions(batch, vae, space, device)
    return _encode(vae, space, frames), frames, control, cond


def tiny_vae(data: ClipDataset | None = None, clips: int = 8):
    """The randomly initialised Wan 2.1-layout VAE the embedded default trains with.

    Its latent statistics come from the data: Wan's published ``latents_mean/std`` describe the
    real Wan VAE, and on a random one they leave the clip-to-clip content at ~0.1% of the latent
    variance, so the flow-matching loss cannot see the controls. Per-channel statistics over a few
    clips put the content back at ~25% (measured on the sample logs)."""
    from chopgrad_core.tiny import tiny_wan21

    vae = tiny_wan21().requires_grad_(False)
    if data is not None:
        with torch.no_grad():
            z = torch.cat([vae.encode(data[i]["images"].permute(1, 2, 0, 3, 4)).latent_dist.mode()
                           for i in range(min(clips, len(data)))])  # (N*K, C, t, h, w)
        vae.register_to_config(latents_mean=z.mean(dim=(0, 2, 3, 4)).tolist(),
                               latents_std=z.std(dim=(0, 2, 3, 4)).clamp_min(1e-6).tolist())
    return vae


def load_pretrained(folder: str):
    """Transformer and VAE from a local diffusers-format folder; a missing part names model.pretrained."""
    from diffusers import AutoencoderKLWan, WanVACETransformer3DModel

    root = Path(folder)
    for part in ("transformer", "vae"):
        if not (root / part / "config.json").is_file():
            raise TrainConfigError(f"model.pretrained={folder!r} has no {part}/config.json; point model.pretrained at "
                                   "a local folder with transformer/ and vae/ (diffusers save_pretrained layout)")
    return (WanVACETransformer3DModel.from_pretrained(root / "transformer", local_files_only=True),
            AutoencoderKLWan.from_pretrained(root / "vae", local_files_only=True))


def load_trained(checkpoint: str | Path, device: str | torch.device = "cpu") -> tuple[TrainConfig, ControlledWan, object]:
    """(TrainConfig, ControlledWan, VAE) as a drivegen.train checkpoint folder left them: the VAE
    is the checkpoint's own ``vae/`` (the tiny default's, fitted statistics and any fine-tuned
    decoder included) or else the one of ``model.pretrained``. Weights are the raw model's;
    ``ema.safetensors`` beside it holds the averaged ones."""
    from diffusers import AutoencoderKLWan

    path = Path(checkpoint)
    model_file = path / "model.safetensors"
    if not model_file.is_file():
        raise TrainConfigError(f"checkpoint {str(path)!r} holds no model.safetensors; train one with "
                               "`python -m drivegen.train` (it writes <trainer.out>/checkpoint)")
    with safe_open(str(model_file), "pt") as f:
        cfg = TrainConfig.from_dict(json.loads(f.metadata()["config"]))
    transformer, vae = load_pretrained(cfg.model.pretrained) if cfg.model.pretrained else (None, None)
    if (path / "vae" / "config.json").is_file():
        vae = AutoencoderKLWan.from_pretrained(path / "vae", local_files_only=True)
    model = ControlledWan(cfg.model, transformer)
    if cfg.trainer.lora:
        apply_lora(model, cfg.trainer.lora)
    model.load_state_dict(load_file(str(model_file)))
    return cfg, model.to(device), (vae if vae is not None else tiny_vae()).to(device)


# ----------------------------------------------------------------------------------------------
# Trainer
# ----------------------------------------------------------------------------------------------


class Trainer:
    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        tc = cfg.trainer
        self.device = torch.device("cuda" if tc.device == "auto" and torch.cuda.is_available()
                                   else ("cpu" if tc.device == "auto" else tc.device))
        torch.manual_seed(tc.seed)
        store = ensure_store(cfg)
        try:
            self.data = ClipDataset(store, clip_length=cfg.data.clip_length, image_size=cfg.data.image_size,
                                    sampling="sequential", datasets=cfg.data.datasets)
        except DrivegenError as exc:  # the dataset's words, translated to this job's config keys
            raise TrainConfigError(f"data.store={str(store)!r} does not fit this run: {exc} (here the keys are "
                                   "data.image_size, data.clip_length and data.datasets; or point data.store at a "
                                   "new path to preprocess one that fits)") from None
        if len(self.data.cameras) > cfg.model.max_cameras:
            raise TrainConfigError(f"the store has {len(self.data.cameras)} cameras; raise model.max_cameras")
        transformer, vae = (load_pretrained(cfg.model.pretrained) if cfg.model.pretrained
                            else (None, tiny_vae(self.data)))
        self.vae = vae.requires_grad_(False).to(self.device)
        if cfg.model.train_decoder:  # the pixel loss reaches these through chopgrad_core.pixel_loss
            self.vae.decoder.requires_grad_(True)
            self.vae.post_quant_conv.requires_grad_(True)
        self.space = LatentSpace(self.vae)
        self.decoder = chopgrad_core.wrap(self.vae)
        self.model = ControlledWan(cfg.model, transformer).to(self.device)
        if tc.gradient_checkpointing:
            self.model.transformer.enable_gradient_checkpointing()
        if tc.lora:
            apply_lora(self.model, tc.lora)
        self.params = [p for p in [*self.model.parameters(), *self.vae.parameters()] if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=tc.lr, weight_decay=tc.weight_decay)
        self.ema = (torch.optim.swa_utils.AveragedModel(
            self.model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(tc.ema)) if tc.ema else None)
        self.out = Path(tc.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.history: list[dict[str, float]] = []
        self.step = 0
        self.tb = None
        if tc.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.out / "tensorboard"))
        if tc.resume:
            self.load_checkpoint(self.out / "checkpoint" if tc.resume == "auto" else Path(tc.resume))

    def batches(self):
        """Batches from ``self.step`` on: the order is a function of (seed, epoch), so a resumed
        run sees exactly the batches the uninterrupted one would have."""
        n, bs = len(self.data), self.cfg.data.batch_size
        per_epoch = max(1, n // bs)
        kw = dict(multiprocessing_context="spawn") if self.cfg.data.num_workers else {}
        step = self.step * self.cfg.trainer.grad_accum  # batches consumed so far
        while True:
            epoch, offset = divmod(step, per_epoch)
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.cfg.trainer.seed + epoch))
            indices = order[offset * bs : per_epoch * bs].tolist()
            loader = torch.utils.data.DataLoader(torch.utils.data.Subset(self.data, indices), batch_size=bs,
                                                 num_workers=self.cfg.data.num_workers, **kw)
            for batch in loader:
                yield batch
                step += 1

    def train_step(self, batches, step: int) -> dict[str, float]:
        """batch -> forward -> flow-matching + ChopGrad pixel loss -> (accumulate) -> clip -> step -> log."""
        tc = self.cfg.trainer
        self.opt.zero_grad(set_to_none=True)
        totals: dict[str, float] = {}
        for micro in range(tc.grad_accum):
            x0, frames, control, cond = prepare(next(batches), self.vae, self.space, self.device)
            gen = torch.Generator().manual_seed(tc.seed * 1_000_003 + step * tc.grad_accum + micro)
            # bf16 autocast on the GPU; the pixel loss and flow loss are reduced in float32 inside.
            autocast = torch.autocast("cuda", torch.bfloat16, enabled=self.device.type == "cuda"
                                      and tc.mixed_precision == "bf16")
            with autocast:
                out = losses(self.model, self.decoder, self.space, x0, frames, control, cond, self.cfg.objective,
                             self.cfg.chopgrad, gen)
            if not torch.isfinite(out["total"]):
                raise TrainConfigError(f"non-finite loss at step {step}: {float(out['total'])}; lower trainer.lr "
                                       f"(={tc.lr}); the last checkpoint in {self.out} is kept")
            (out["total"] / tc.grad_accum).backward()
            for k, v in out.items():
                totals[k] = totals.get(k, 0.0) + float(v.detach()) / tc.grad_accum
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, tc.grad_clip)
        self.opt.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        return totals | {"grad_norm": float(grad_norm)}

    def train(self) -> dict:
        tc = self.cfg.trainer
        t0 = time.perf_counter()
        batches = self.batches()
        bar = tqdm(range(self.step, tc.steps), desc="train", unit="step", initial=self.step, total=tc.steps)
        for step in bar:
            record = self.train_step(batches, step)
            self.history.append(record)
            self.step = step + 1
            bar.set_postfix(flow=f"{record['flow']:.3f}", pixel=f"{record.get('pixel', 0):.3f}")
            if self.tb is not None:
                for key, value in record.items():
                    self.tb.add_scalar(f"train/{key}", value, self.step)
                self.tb.add_scalar("train/lr", self.opt.param_groups[0]["lr"], self.step)
                self.tb.add_scalar("train/steps_per_s", bar.format_dict["rate"] or 0.0, self.step)
            if tc.save_every and self.step % tc.save_every == 0:
                self.save_checkpoint()
        self.save_checkpoint()
        if self.tb is not None:
            self.tb.close()
        summary = self.summary(time.perf_counter() - t0)
        if len(self.data) >= 2:  # does the model use its controls? (drivegen.train.evaluate)
            clips = [prepare(torch.utils.data.default_collate([self.data[i]]), self.vae, self.space, self.device)
                     for i in range(min(8, len(self.data)))]
            summary["control_gap"] = {k: round(v, 4) for k, v in control_gap(self.model, clips).items()}
        if tc.sample_steps:
            summary["samples"] = self.write_samples()
        print(json.dumps(summary, indent=2))
        return summary

    @torch.no_grad()
    def write_samples(self, index: int = 0) -> dict:
        """Generate clip ``index``'s video from its conditions; write mp4s per camera and a mosaic
        (generated / control / ground truth) under out/samples."""
        batch = torch.utils.data.default_collate([self.data[index]])
        x0, frames, control, cond = prepare(batch, self.vae, self.space, self.device)
        self.model.eval()
        latents = sample_latents(self.model, control, cond, tuple(x0.shape), tuple(frames.shape[-2:]),
                                 steps=self.cfg.trainer.sample_steps, seed=self.cfg.trainer.seed)
        self.model.train()
        b, k = latents.shape[:2]
        video = chopgrad_core.decode(self.decoder, self.space.denormalise(latents.flatten(0, 1)))  # (K, 3, T, H, W)
        generated = to_uint8(video.transpose(1, 2))  # (K, T, H, W, 3)
        truth = to_uint8(frames[0].transpose(1, 2))
        controls = to_uint8(batch["control"][0].transpose(0, 1))  # (K, T, H, W, 3)
        folder = self.out / "samples"
        for i, name in enumerate(self.data.cameras):
            write_mp4(folder / f"{name}.mp4", generated[i])
        grid = mosaic([generated.swapaxes(0, 1), controls.swapaxes(0, 1), truth.swapaxes(0, 1)])
        write_mp4(folder / "mosaic.mp4", grid)
        imageio.imwrite(folder / "mosaic_frame0.png", grid[0])
        l1 = float((video - frames[0].to(video)).abs().mean())
        return {"folder": str(folder), "l1_to_ground_truth": round(l1, 4)}

    # -- checkpoints: safetensors, written to a temp folder and renamed into place -------------

    def save_checkpoint(self) -> Path:
        final = self.out / "checkpoint"
        tmp = self.out / "checkpoint.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        meta = {"step": str(self.step), "model_config": json.dumps(asdict(self.cfg.model)),
                "config": json.dumps(asdict(self.cfg), default=str)}
        save_file({k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()},
                  str(tmp / "model.safetensors"), metadata=meta)
        if self.ema is not None:
            save_file({k: v.detach().cpu().contiguous() for k, v in self.ema.module.state_dict().items()},
                      str(tmp / "ema.safetensors"), metadata={"n_averaged": str(int(self.ema.n_averaged))})
        tensors, layout = _flatten_optimizer(self.opt.state_dict())
        save_file(tensors, str(tmp / "optimizer.safetensors"), metadata={"layout": json.dumps(layout)})
        (tmp / "history.json").write_text(json.dumps(self.history))
        save_file({"torch": torch.get_rng_state()}, str(tmp / "rng.safetensors"))
        if not self.cfg.model.pretrained or self.cfg.model.train_decoder:  # the VAE is part of what was trained
            self.vae.save_pretrained(tmp / "vae")
        old = self.out / "checkpoint.old"
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
        (self.out / "history.json").write_text(json.dumps(self.history))
        self.plot(self.out / "loss.png")
        return final

    def load_checkpoint(self, path: Path) -> None:
        model_file = path / "model.safetensors"
        if not model_file.is_file():
            raise TrainConfigError(f"trainer.resume={str(path)!r}: no checkpoint there (expected {model_file}); "
                                   "set trainer.resume to a checkpoint folder, auto, or null")
        with safe_open(str(model_file), "pt") as f:
            meta = f.metadata()
        saved = json.loads(meta["model_config"])
        diff = {k: (v, getattr(self.cfg.model, k, None)) for k, v in saved.items() if getattr(self.cfg.model, k, None) != v}
        if diff:
            key, (was, now) = next(iter(diff.items()))
            raise TrainConfigError(f"checkpoint {path} was trained with model.{key}={was!r}, this run has {now!r}; "
                                   f"set model.{key}={was!r} (differences: {sorted(diff)})")
        self.model.load_state_dict(load_file(str(model_file)))
        with safe_open(str(path / "optimizer.safetensors"), "pt") as f:
            layout = json.loads(f.metadata()["layout"])
        self.opt.load_state_dict(_unflatten_optimizer(load_file(str(path / "optimizer.safetensors")), layout))
        self.step = int(meta["step"])
        if self.ema is not None and (path / "ema.safetensors").is_file():
            self.ema.module.load_state_dict(load_file(str(path / "ema.safetensors")))
            with safe_open(str(path / "ema.safetensors"), "pt") as f:
                self.ema.n_averaged.fill_(int(f.metadata()["n_averaged"]))
        self.history = json.loads((path / "history.json").read_text())
        if self.cfg.model.train_decoder and (path / "vae" / "diffusion_pytorch_model.safetensors").is_file():
            self.vae.load_state_dict(load_file(str(path / "vae" / "diffusion_pytorch_model.safetensors")))
        if (path / "rng.safetensors").is_file():
            torch.set_rng_state(load_file(str(path / "rng.safetensors"))["torch"])

    def summary(self, seconds: float) -> dict:
        first, last = self.history[: max(1, len(self.history) // 10)], self.history[-max(1, len(self.history) // 10):]
        mean = lambda rows, key: sum(r.get(key, math.nan) for r in rows) / len(rows)  # noqa: E731
        return {"steps": self.step, "seconds": round(seconds, 1), "checkpoint": str(self.out / "checkpoint"),
                "flow_first": mean(first, "flow"), "flow_last": mean(last, "flow"),
                "pixel_first": mean(first, "pixel"), "pixel_last": mean(last, "pixel")}

    def plot(self, path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 3.5))
        for key in ("flow", "pixel"):
            ys = [r[key] for r in self.history if key in r]
            if ys:
                k = max(1, len(ys) // 20)
                smooth = [sum(ys[max(0, i - k):i + 1]) / len(ys[max(0, i - k):i + 1]) for i in range(len(ys))]
                (line,) = ax.plot(smooth, label=key)
                ax.plot(ys, alpha=0.3, color=line.get_color())
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_yscale("log")
        ax.legend()
        ax.set_title("drivegen.train")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)


def _flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimizer state dict as flat tensors (safetensors holds tensors only) plus a JSON layout."""
    tensors, layout = {}, {"param_groups": state["param_groups"], "state": {}}
    for pid, entry in state["state"].items():
        layout["state"][str(pid)] = {}
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{pid}.{name}"] = value.detach().cpu().contiguous()
                layout["state"][str(pid)][name] = None
            else:
                layout["state"][str(pid)][name] = value
    return tensors, layout


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], layout: dict) -> dict:
    state = {int(pid): {name: tensors[f"{pid}.{name}"] if value is None else value for name, value in entry.items()}
             for pid, entry in layout["state"].items()}
    return {"state": state, "param_groups": layout["param_groups"]}
