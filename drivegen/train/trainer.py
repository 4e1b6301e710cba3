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

import torch

import chopgrad_core
from chopgrad_core.atomic import atomic_path, check_writable, save_safetensors, write_json, write_png
from chopgrad_core.progress import progress
from chopgrad_core.video import mosaic, to_uint8, write_mp4
from drivegen.data.dataset import ClipDataset
from drivegen.data.preprocess import ClipConfig, ConditionsConfig, PreprocessConfig, SplitConfig
from drivegen.data.preprocess import run as preprocess_logs
from drivegen.data.store import consolidated_clips
from drivegen.errors import DrivegenError, TrainConfigError
from drivegen.model import checkpoint as ckpt
from drivegen.model.conditioning import prepare
from drivegen.model.controlled_wan import ControlledWan, apply_lora
from drivegen.model.objective import LatentSpace, losses
from drivegen.model.sampler import sample_latents
from drivegen.model.vae import load_pretrained, load_vae
from drivegen.train.config import TrainConfig
from drivegen.train import parallel
from drivegen.train.control_gap import control_gap


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------


def peak_rss_gib() -> float:
    """This process's peak resident memory: VmHWM where Linux gives it (getrusage's ru_maxrss
    survives exec, so a process started from a large parent would report the parent's size),
    else ru_maxrss (KiB on Linux, bytes on macOS)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 2**20
    except (OSError, StopIteration):
        import resource
        import sys

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss / 2**30 if sys.platform == "darwin" else rss / 2**20


def ensure_store(cfg: TrainConfig) -> Path:
    """The clip store, made from the logs (and the logs from the sample world) when missing."""
    store = Path(cfg.data.store)
    # A store is finished once its metadata is consolidated; a first run that was killed left none,
    # and preprocessing it again resumes it (finished clips are kept).
    if (store / "zarr.json").is_file() and consolidated_clips(store) is not None:
        return store
    logs = Path(cfg.data.logs)
    if not logs.exists():
        from drivegen.data.sample_data import generate_sample_logs

        print(f"drivegen.train: no logs at {logs}; writing the sample logs there")
        generate_sample_logs(logs)
    print(f"drivegen.train: no clip store at {store}; preprocessing {logs}")
    # The preprocessing defaults are configs/preprocess.yaml's (tests/test_configs.py keeps them equal).
    pcfg = PreprocessConfig(input_root=str(logs), out=str(store),
                            conditions=ConditionsConfig(image_size=list(cfg.data.image_size), bev=False),
                            clip=ClipConfig(length=cfg.data.clip_length, stride=cfg.data.clip_length),
                            split=SplitConfig(val_logs=cfg.data.val_logs))
    preprocess_logs(pcfg)  # prints its own progress and summary
    return store


# ----------------------------------------------------------------------------------------------
# Trainer
# ----------------------------------------------------------------------------------------------


class Trainer:
    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        tc = cfg.trainer
        self.device = torch.device("cuda" if tc.device == "auto" and torch.cuda.is_available()
                                   else ("cpu" if tc.device == "auto" else tc.device))
        # Several processes (torchrun, or Ray Train's workers): one GPU each, then the mesh.
        self.par: parallel.Parallel | None = None
        if parallel.launched():
            if self.device.type == "cuda" and self.device.index is None:
                self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            self.par = parallel.init_parallel(tc.context_parallel, self.device)
        elif tc.context_parallel > 1:
            raise TrainConfigError(f"trainer.context_parallel={tc.context_parallel} needs as many processes: launch "
                                   "with torchrun --nproc_per_node=N -m drivegen.train, or launcher=ray "
                                   "trainer.num_workers=N")
        self.main = self.par is None or self.par.rank == 0  # the process that prints and writes files
        if self.par is not None and tc.ema:
            raise TrainConfigError("trainer.ema is not supported with more than one process yet; set trainer.ema=null")
        self.out = check_writable(tc.out, "trainer.out")  # before any work: a save must not fail at the end
        torch.manual_seed(tc.seed)
        if self.par is not None and not self.main:
            self.par.barrier()  # rank 0 makes the store if missing; the others wait for it
        store = ensure_store(cfg)
        if self.par is not None and self.main:
            self.par.barrier()
        try:
            self.data = ClipDataset(store, clip_length=cfg.data.clip_length, image_size=cfg.data.image_size,
                                    sampling="sequential", datasets=cfg.data.datasets, split=cfg.data.split)
        except DrivegenError as exc:  # the dataset's words, translated to this job's config keys
            raise TrainConfigError(f"data.store={str(store)!r} does not fit this run: {exc} (here the keys are "
                                   "data.image_size, data.clip_length and data.datasets; or point data.store at a "
                                   "new path to preprocess one that fits)") from None
        if len(self.data.cameras) > cfg.model.max_cameras:
            raise TrainConfigError(f"the store has {len(self.data.cameras)} cameras; raise model.max_cameras")
        if self.par is not None and cfg.data.batch_size % self.par.dp:
            raise TrainConfigError(f"data.batch_size={cfg.data.batch_size} is the global batch: it must split evenly "
                                   f"over the {self.par.dp} data-parallel process groups")
        if self.par is not None and len(self.data.cameras) % self.par.cp:
            raise TrainConfigError(f"camera-parallel ChopGrad splits the {len(self.data.cameras)} cameras over "
                                   f"trainer.context_parallel={self.par.cp} processes: choose a divisor")
        self.val = None  # the val split, when the store has one (trainer.val_every)
        if tc.val_every:
            try:
                self.val = ClipDataset(store, clip_length=cfg.data.clip_length, image_size=cfg.data.image_size,
                                       sampling="sequential", datasets=cfg.data.datasets, split="val")
            except DrivegenError as exc:
                self.log(f"no validation loss (trainer.val_every={tc.val_every}): {exc}")
        transformer, vae = (load_pretrained(cfg.model.pretrained) if cfg.model.pretrained
                            else (None, load_vae(cfg.model.vae, self.data, device=self.device)))
        self.vae = vae.requires_grad_(False).to(self.device)
        if cfg.model.train_decoder:  # the pixel loss reaches these through chopgrad_core.pixel_loss
            self.vae.decoder.requires_grad_(True)
            self.vae.post_quant_conv.requires_grad_(True)
        self.space = LatentSpace(self.vae)
        self.decoder = chopgrad_core.wrap(self.vae)
        self.model = ControlledWan(cfg.model, transformer).to(self.device)
        # Prepared inputs of clips (data.cache_mb): exact, since the encoder is always frozen.
        # With DataLoader workers (data.num_workers > 0) the workers read ahead instead.
        self.cache = ({} if cfg.data.cache_mb > 0 and cfg.data.num_workers == 0 and (self.par is None or self.par.cp == 1)
                      else None)
        self.cache_bytes = 0
        if tc.gradient_checkpointing:
            self.model.transformer.enable_gradient_checkpointing()
        if tc.lora:
            apply_lora(self.model, tc.lora)
        if self.par is not None:  # drivegen/train/parallel.py: context parallel, then FSDP
            if self.par.cp > 1:
                parallel.apply_context_parallel(self.model.transformer, self.par)
            parallel.apply_fsdp(self.model, self.par,
                                bf16=self.device.type == "cuda" and tc.mixed_precision == "bf16")
        self.params = [p for p in [*self.model.parameters(), *self.vae.parameters()] if p.requires_grad]
        self.sharded = [p for p in self.model.parameters() if p.requires_grad]
        self.replicated = [p for p in self.vae.parameters() if p.requires_grad]
        # One module over everything with optimizer state: the names distributed checkpoints use.
        self.modules = torch.nn.ModuleDict({"model": self.model, "vae": self.vae})
        self.opt = torch.optim.AdamW(self.params, lr=tc.lr, weight_decay=tc.weight_decay)
        self.ema = (torch.optim.swa_utils.AveragedModel(
            self.model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(tc.ema)) if tc.ema else None)
        self.history: list[dict[str, float]] = []
        self.step = 0
        self.tb = None
        if tc.tensorboard and self.main:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.out / "tensorboard"))
        latest = ckpt.find_latest(self.out)
        if tc.resume == "auto":
            if latest is not None:
                self.resume(latest)
        elif tc.resume:
            self.resume(ckpt.resolve(tc.resume, "trainer.resume"))
        elif latest is not None and not tc.overwrite:
            raise TrainConfigError(f"trainer.out={tc.out!r} already holds {latest.name} from an earlier run; set "
                                   "trainer.resume=auto to continue it, trainer.overwrite=true to start over "
                                   "(its checkpoints are removed first), or another trainer.out")
        elif latest is not None:  # overwrite: the old run's checkpoints go, or resume=auto would find them later
            ckpt.remove_checkpoints(self.out)

    def batches(self):
        """Batches from ``self.step`` on: the order is a function of (seed, epoch), so a resumed
        run sees exactly the batches the uninterrupted one would have."""
        n, bs = len(self.data), self.cfg.data.batch_size
        per_epoch = max(1, n // bs)
        kw = dict(multiprocessing_context="spawn") if self.cfg.data.num_workers else {}
        step = self.step * self.cfg.trainer.grad_accum  # batches consumed so far
        rows = self.par.rows(bs) if self.par is not None else slice(0, bs)  # data parallel: this rank's rows
        while True:
            epoch, offset = divmod(step, per_epoch)
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.cfg.trainer.seed + epoch))
            indices = order[offset * bs : per_epoch * bs].tolist()
            indices = [i for j in range(0, len(indices), bs) for i in indices[j : j + bs][rows]]
            if self.cache is not None:  # prepared inputs, from memory where cached
                per = rows.stop - rows.start
                for j in range(0, len(indices) - per + 1, per):
                    yield {"prepared": self.prepared(indices[j : j + per])}
                    step += 1
                continue
            loader = torch.utils.data.DataLoader(torch.utils.data.Subset(self.data, indices),
                                                 batch_size=rows.stop - rows.start,
                                                 num_workers=self.cfg.data.num_workers, **kw)
            for batch in loader:
                yield batch
                step += 1

    def prepared(self, indices: list[int]) -> tuple:
        """(x0, frames, control, cond) of the clips ``indices``, each prepared alone (as a batch of
        one) and kept in ``self.cache`` (host memory) while ``data.cache_mb`` allows."""
        parts = []
        for i in indices:
            item = self.cache.get(i)
            if item is None:
                batch = torch.utils.data.default_collate([self.data[i]])
                x0, frames, control, cond = prepare(batch, self.vae, self.space, self.device)
                item = (x0.cpu(), frames.cpu(), control.cpu(), {k: v.cpu() for k, v in cond.items()})
                size = sum(t.numel() * t.element_size() for t in (*item[:3], *item[3].values()))
                if self.cache_bytes + size <= self.cfg.data.cache_mb * 2**20:
                    self.cache[i] = item
                    self.cache_bytes += size
            parts.append(item)
        dev = self.device
        if len(parts) == 1:  # as prepared (no concatenation copy): the same memory layout, the same numbers
            x0, frames, control, cond = parts[0]
            return x0.to(dev), frames.to(dev), control.to(dev), {k: v.to(dev) for k, v in cond.items()}
        return (torch.cat([p[0] for p in parts]).to(dev), torch.cat([p[1] for p in parts]).to(dev),
                torch.cat([p[2] for p in parts]).to(dev),
                {k: torch.cat([p[3][k] for p in parts]).to(dev) for k in parts[0][3]})

    def lr_at(self, step: int) -> float:
        """Learning rate of the update at ``step`` (0-based): linear warmup, then constant or cosine."""
        tc = self.cfg.trainer
        if step < tc.lr_warmup:
            return tc.lr * (step + 1) / tc.lr_warmup
        if tc.lr_schedule == "cosine":
            progress_ = (step - tc.lr_warmup) / max(1, tc.steps - tc.lr_warmup)
            return tc.lr * (tc.lr_min_ratio + (1 - tc.lr_min_ratio) * 0.5 * (1 + math.cos(math.pi * progress_)))
        return tc.lr

    def prepare(self, batch: dict) -> tuple:
        """(x0, frames, control, cond, this rank's camera share or None)."""
        if "prepared" in batch:  # from self.batches' cache path
            return (*batch["prepared"], None)
        if self.par is not None and self.par.cp > 1:  # camera-parallel: each rank encodes its cameras
            return parallel.prepare_camera_parallel(batch, self.vae, self.space, self.par)
        return (*prepare(batch, self.vae, self.space, self.device), None)

    def compute_losses(self, batch: dict, gen: torch.Generator) -> dict[str, torch.Tensor]:
        x0, frames, control, cond, cameras = self.prepare(batch)
        shard = {} if self.par is None else dict(rows=self.par.rows(self.cfg.data.batch_size),
                                                 global_batch=self.cfg.data.batch_size, cameras=cameras)
        # bf16 autocast on the GPU; the pixel loss and flow loss are reduced in float32 inside.
        autocast = torch.autocast("cuda", torch.bfloat16, enabled=self.device.type == "cuda"
                                  and self.cfg.trainer.mixed_precision == "bf16")
        with autocast:
            return losses(self.model, self.decoder, self.space, x0, frames, control, cond, self.cfg.objective,
                          self.cfg.chopgrad, gen, **shard)

    def reduce(self, out: dict[str, torch.Tensor]) -> dict[str, float]:
        """This rank's loss parts -> the global batch's: summed over the context-parallel shares,
        averaged over the data-parallel groups (one all-reduce)."""
        keys = sorted(out)
        values = torch.stack([out[k].detach().float() for k in keys])
        if self.par is not None:
            values = self.par.all_sum(values) / self.par.dp
        return dict(zip(keys, values.tolist()))

    def train_step(self, batches, step: int) -> dict[str, float]:
        """batch -> forward -> flow-matching + ChopGrad pixel loss -> (accumulate) -> clip -> step -> log."""
        tc = self.cfg.trainer
        t0 = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        totals: dict[str, float] = {}
        for micro in range(tc.grad_accum):
            gen = torch.Generator().manual_seed(tc.seed * 1_000_003 + step * tc.grad_accum + micro)
            out = self.compute_losses(next(batches), gen)
            # Several processes: the global value, so that every rank stops together (a collective).
            values = self.reduce(out) if self.par is not None else None
            total = values["total"] if values is not None else float(out["total"].detach())
            if not math.isfinite(total):
                raise TrainConfigError(f"non-finite loss at step {step}: {total}; lower trainer.lr "
                                       f"(={tc.lr}); the last checkpoint in {self.out} is kept")
            if self.par is None:
                (out["total"] / tc.grad_accum).backward()
                values = {k: float(v.detach()) for k, v in out.items()}
            else:  # FSDP averages over dp x cp ranks; each holds a 1/cp share of its clip's loss
                (out["total"] * self.par.cp / tc.grad_accum).backward()
            for k, v in values.items():
                totals[k] = totals.get(k, 0.0) + v / tc.grad_accum
        if self.par is None:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.params, tc.grad_clip)
        else:
            parallel.reduce_replicated_grads(self.replicated, self.par)
            grad_norm = parallel.clip_grad_norm(self.sharded, self.replicated, tc.grad_clip)
        for group in self.opt.param_groups:
            group["lr"] = self.lr_at(step)
        self.opt.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        record = totals | {"grad_norm": float(grad_norm), "step_s": time.perf_counter() - t0}
        if self.device.type == "cuda":
            record["max_mem_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        return record

    @torch.no_grad()
    def validate(self) -> dict[str, float] | None:
        """Mean losses over ``trainer.val_batches`` batches of the val split, each with its own fixed
        noise (the same at every validation)."""
        if self.val is None:
            return None
        tc, bs = self.cfg.trainer, self.cfg.data.batch_size
        rows = self.par.rows(bs) if self.par is not None else slice(0, bs)
        self.model.eval()
        totals: dict[str, float] = {}
        for i in range(tc.val_batches):
            items = [self.val[(i * bs + j) % len(self.val)] for j in range(bs)][rows]
            gen = torch.Generator().manual_seed(tc.seed + 7919 * (i + 1))
            for k, v in self.reduce(self.compute_losses(torch.utils.data.default_collate(items), gen)).items():
                totals[k] = totals.get(k, 0.0) + v / tc.val_batches
        self.model.train()
        return totals

    def log(self, message: str) -> None:
        if self.main:
            print(f"drivegen.train: {message}", flush=True)

    def train(self) -> dict:
        tc = self.cfg.trainer
        t0 = time.perf_counter()
        batches = self.batches()
        bar = progress(range(self.step, tc.steps), desc="train", unit="step", initial=self.step, total=tc.steps,
                       disable=not self.main)
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
            if tc.val_every and self.step % tc.val_every == 0 and (val := self.validate()) is not None:
                self.history[-1] |= {f"val_{k}": v for k, v in val.items()}
                self.log(f"step {self.step}: val " + " ".join(f"{k}={v:.4f}" for k, v in val.items()))
                for key, value in val.items():
                    if self.tb is not None:
                        self.tb.add_scalar(f"val/{key}", value, self.step)
            if tc.save_every and self.step % tc.save_every == 0:
                self.save()
        self.save()
        if self.tb is not None:
            self.tb.close()
        summary = self.summary(time.perf_counter() - t0)
        # Every process runs these (the sharded model's forward is collective); rank 0 writes.
        if len(self.data) >= 2:  # does the model use its controls? (drivegen.train.control_gap)
            clips = [self.prepared([i]) if self.cache is not None else
                     prepare(torch.utils.data.default_collate([self.data[i]]), self.vae, self.space, self.device)
                     for i in range(min(8, len(self.data)))]  # from the cache when training filled it
            summary["control_gap"] = {k: round(v, 4) for k, v in control_gap(self.model, clips).items()}
        if tc.sample_steps:
            summary["samples"] = self.write_samples()
        if self.main:
            write_json(self.out / "summary.json", summary)
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
        if not self.main:  # the sampling above was collective; decoding and writing are rank 0's
            return {}
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
        write_png(folder / "mosaic_frame0.png", grid[0])
        l1 = float((video - frames[0].to(video)).abs().mean())
        return {"folder": str(folder), "l1_to_ground_truth": round(l1, 4)}

    # -- checkpoints: versioned folders, atomic (drivegen.model.checkpoint) ---------------------

    def save(self) -> Path | None:
        """``out/checkpoint-<step>/`` with everything an exact resume needs, then the loss history
        and curve beside it. Several processes: the sharded model and optimizer go into ``dcp/``
        (torch.distributed.checkpoint: every rank writes its shards, loadable at any world size),
        beside the same ``model.safetensors`` one process writes (the gathered weights: what
        generation loads), inside the one temporary folder that rank 0 renames into place."""
        config = ckpt.absolute_paths(asdict(self.cfg))
        meta = {"step": str(self.step), "model_config": json.dumps(asdict(self.cfg.model)),
                "config": json.dumps(config, default=str)}

        def write(folder: Path) -> None:
            if self.par is not None:
                self.par.broadcast_object(str(folder))  # the other ranks write their shards there too
                full = self._save_sharded(folder)
            else:
                full = self.model.state_dict()
                tensors, layout = ckpt.flatten_optimizer(self.opt.state_dict())
                save_safetensors(tensors, folder / "optimizer.safetensors", metadata={"layout": json.dumps(layout)})
            save_safetensors(full, folder / "model.safetensors", metadata=meta)
            if self.ema is not None:
                save_safetensors(self.ema.module.state_dict(), folder / "ema.safetensors",
                                 metadata={"n_averaged": str(int(self.ema.n_averaged))})
            write_json(folder / "history.json", self.history, indent=None)
            save_safetensors({"torch": torch.get_rng_state()}, folder / "rng.safetensors")
            if not self.cfg.model.pretrained or self.cfg.model.train_decoder:  # the VAE is part of what was trained
                self.vae.save_pretrained(folder / "vae")

        if not self.main:  # rank 0 names the temporary folder; this rank writes its shards into it
            self._save_sharded(Path(self.par.broadcast_object(None)))
            self.par.barrier()
            return None
        final = ckpt.save_checkpoint(self.out, self.step, write, keep=self.cfg.trainer.keep_checkpoints)
        write_json(self.out / "history.json", self.history, indent=None)
        self.plot(self.out / "loss.png")
        if self.par is not None:
            self.par.barrier()  # nobody runs ahead of a checkpoint that is not in place yet
        return final

    def _save_sharded(self, folder: Path) -> dict:
        """Collective: the shards of model and optimizer into folder/dcp; returns the gathered
        model weights on rank 0 (empty elsewhere)."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_state_dict

        model_sd, optim_sd = get_state_dict(self.modules, self.opt)
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(folder / "dcp"))
        return get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def resume(self, path: Path) -> None:
        """Continue exactly where the checkpoint ``path`` left off (model, optimizer, EMA, RNG, data
        order), at any world size: a sharded checkpoint (``dcp/``) is resharded on load, a
        one-process checkpoint is scattered from its full tensors."""
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_state_dict, set_model_state_dict,
                                                             set_optimizer_state_dict, set_state_dict)

        meta = ckpt.read_metadata(path / "model.safetensors")
        saved = json.loads(meta["model_config"])
        diff = {k: (v, getattr(self.cfg.model, k, None)) for k, v in saved.items() if getattr(self.cfg.model, k, None) != v}
        if diff:
            key, (was, now) = next(iter(diff.items()))
            raise TrainConfigError(f"checkpoint {path} was trained with model.{key}={was!r}, this run has {now!r}; "
                                   f"set model.{key}={was!r} (differences: {sorted(diff)})")
        if (path / "dcp").is_dir():  # written by several processes
            import torch.distributed.checkpoint as dcp

            model_sd, optim_sd = get_state_dict(self.modules, self.opt)
            state = {"model": model_sd, "optim": optim_sd}
            dcp.load(state, checkpoint_id=str(path / "dcp"))
            set_state_dict(self.modules, self.opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
        elif self.par is None:
            self.model.load_state_dict(ckpt.load_tensors(path / "model.safetensors"))
            layout = json.loads(ckpt.read_metadata(path / "optimizer.safetensors")["layout"])
            self.opt.load_state_dict(ckpt.unflatten_optimizer(ckpt.load_tensors(path / "optimizer.safetensors"), layout))
        else:  # a one-process checkpoint, continued by several: full tensors in, each rank keeps its shards
            full = StateDictOptions(full_state_dict=True)
            set_model_state_dict(self.model, ckpt.load_tensors(path / "model.safetensors"), options=full)
            layout = json.loads(ckpt.read_metadata(path / "optimizer.safetensors")["layout"])
            by_id = ckpt.unflatten_optimizer(ckpt.load_tensors(path / "optimizer.safetensors"), layout)
            # Parameter ids are positions in self.params (model, then VAE); distributed state dicts use names.
            names = [f"{prefix}.{n}" for prefix, module in (("model", self.model), ("vae", self.vae))
                     for n, p in module.named_parameters() if p.requires_grad]
            optim_sd = {"state": {names[i]: v for i, v in by_id["state"].items()},
                        "param_groups": [dict(g, params=[names[i] for i in g["params"]]) for g in by_id["param_groups"]]}
            set_optimizer_state_dict(self.modules, self.opt, optim_sd, options=full)
        if not (path / "dcp").is_dir() and self.cfg.model.train_decoder and \
                (path / "vae" / "diffusion_pytorch_model.safetensors").is_file():
            self.vae.load_state_dict(ckpt.load_tensors(path / "vae" / "diffusion_pytorch_model.safetensors"))
        self.step = int(meta["step"])
        if self.ema is not None and (path / "ema.safetensors").is_file():
            self.ema.module.load_state_dict(ckpt.load_tensors(path / "ema.safetensors"))
            self.ema.n_averaged.fill_(int(ckpt.read_metadata(path / "ema.safetensors")["n_averaged"]))
        self.history = json.loads((path / "history.json").read_text())
        if (path / "rng.safetensors").is_file():
            torch.set_rng_state(ckpt.load_tensors(path / "rng.safetensors")["torch"])
        self.log(f"resuming from {path} (step {self.step})")

    def summary(self, seconds: float) -> dict:
        first, last = self.history[: max(1, len(self.history) // 10)], self.history[-max(1, len(self.history) // 10):]
        mean = lambda rows, key: sum(r.get(key, math.nan) for r in rows) / len(rows)  # noqa: E731
        step_s = sorted(r["step_s"] for r in self.history if "step_s" in r)
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device) / 2**30
        else:
            peak = peak_rss_gib()
        return {"steps": self.step, "seconds": round(seconds, 1), "checkpoint": str(ckpt.find_latest(self.out)),
                "flow_first": mean(first, "flow"), "flow_last": mean(last, "flow"),
                "pixel_first": mean(first, "pixel"), "pixel_last": mean(last, "pixel"),
                "step_s_median": round(step_s[len(step_s) // 2], 4) if step_s else None,
                "peak_memory_gib": round(peak, 3)}

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
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
        plt.close(fig)
