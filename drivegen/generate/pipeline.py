"""One scenario -> videos, labels and a manifest: ``Generator(cfg)(scenario_file)``.

The Generator loads the checkpoint once (a Ray actor holds one) and runs scenarios in numbered steps:

1. Scenario: parse the file, resolve the source clip and the length, skip if already finished.
2. Scene: open the clip's log (map, ego path, agents) and apply the edits (drivegen.generate.scenario).
3. Conditions: render every frame of the edited scene with the store's conditions settings
   (drivegen.preprocess.render_clip_arrays, the same code that wrote the training store).
4. Latents: sample chunk by chunk (drivegen.generate.sampler.sample_video); each chunk is
   conditioned as a training clip of its own (drivegen.train.trainer.prepare_conditions).
5. Pixels: decode group by group (chopgrad_core.decode, stream=True) straight into the mp4
   writers and the dataroot's JPEGs, so memory does not grow with length.
6. Labels and manifest: the edited scene as a nuScenes dataroot, then manifest.json; the
   scenario's folder is renamed into place last (a folder with a manifest is finished).

Outputs under ``out/<scenario name>/``: <camera>.mp4, mosaic.mp4 (generated row, control row),
nuscenes/ (dataroot: 13 tables, map expansion, the generated frames as camera images),
conditions_frame0.png, manifest.json.

Shape legend: B batch, K cameras, C channels, T frames, t latent frames, H W image size, h w latent size.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

import chopgrad_core
from drivegen.errors import GenerateConfigError, ScenarioError
from drivegen.generate.config import GenerateConfig
from drivegen.generate.sampler import chunk_starts, sample_video
from drivegen.generate.scenario import EditedScene, Scenario, apply_edits, load_scenario
from drivegen.store import write_json_atomic
from drivegen.video import mosaic, to_uint8

MANIFEST = "manifest.json"
REPO_ROOT = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------------------------
# Streaming mp4 (belongs beside write_mp4 in chopgrad_core.video; see the generation issue note)
# ----------------------------------------------------------------------------------------------


class Mp4Writer:
    """An mp4 written group by group (memory does not grow with length), atomic: it appears under
    its name only when closed with ok=True; otherwise the temp file is removed."""

    def __init__(self, path: str | os.PathLike, fps: float = 12) -> None:
        import imageio.v2 as imageio

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(self.path.stem + ".partial.mp4")
        # macro_block_size=1: keep odd sizes as they are instead of resizing with a warning.
        self._writer = imageio.get_writer(self._tmp, fps=fps, codec="libx264", quality=8, macro_block_size=1)

    def append(self, frames_FHW3: np.ndarray) -> None:
        for frame in frames_FHW3:
            self._writer.append_data(frame)

    def close(self, ok: bool = True) -> None:
        self._writer.close()
        if ok:
            os.replace(self._tmp, self.path)
        else:
            self._tmp.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------
# Checkpoint
# ----------------------------------------------------------------------------------------------


def checkpoint_digest(folder: Path, ema: bool) -> str:
    """sha256 over the weight files generation uses (model or EMA, and the VAE if saved there)."""
    h = hashlib.sha256()
    files = [folder / ("ema.safetensors" if ema and (folder / "ema.safetensors").is_file() else "model.safetensors")]
    files += sorted((folder / "vae").glob("*")) if (folder / "vae").is_dir() else []
    for f in files:
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _check_checkpoint(folder: str) -> Path:
    path = Path(folder)
    if not (path / "model.safetensors").is_file():
        raise GenerateConfigError(f"checkpoint={folder!r} holds no model.safetensors; run `make train` (it writes "
                                  "outputs/train/checkpoint) or set checkpoint= to a folder written by drivegen.train")
    return path


def load_checkpoint(folder: Path, device: torch.device, ema: bool):
    """(TrainConfig, ControlledWan in eval mode, VAE) from a drivegen.train checkpoint folder."""
    from drivegen.train.trainer import load_trained

    train_cfg, model, vae = load_trained(folder, device)
    if ema and (folder / "ema.safetensors").is_file():
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(folder / "ema.safetensors")))
    return train_cfg, model.to(device).eval().requires_grad_(False), vae.to(device).eval().requires_grad_(False)


# ----------------------------------------------------------------------------------------------
# Source clips
# ----------------------------------------------------------------------------------------------


def _resolve(path: str) -> Path:
    """A path as given (relative to the working folder), else relative to the repository."""
    p = Path(path)
    return p if p.exists() or p.is_absolute() else (REPO_ROOT / p if (REPO_ROOT / p).exists() else p)


def resolve_scenario_file(path: str) -> Path:
    return _resolve(path)


def source_clip(store: Path, clip: str | None, datasets, scenario: str) -> tuple[dict, dict]:
    """(clip attrs, store settings) of the scenario's source clip."""
    from drivegen.dataset import _open_root
    from drivegen.store import CLIPS, FORMAT

    if not (store / "zarr.json").is_file():
        raise ScenarioError(scenario, None, "source.store", f"no clip store at {str(store)!r}; run `make train` "
                            "(it writes datasets/train_clips.zarr) or set source.store to a drivegen.preprocess store")
    root = _open_root(str(store))
    meta = root.attrs.get("drivegen") or {}
    if meta.get("format") != FORMAT:
        raise ScenarioError(scenario, None, "source.store", f"{str(store)!r} is not a drivegen clip store")
    clips = {name: dict(g.attrs) for name, g in root[CLIPS].groups()}
    if clip is None:
        candidates = sorted(n for n, a in clips.items() if datasets is None or a["dataset"] in datasets)
        if not candidates:
            raise ScenarioError(scenario, None, "source.clip", f"the store {str(store)!r} has no clips of {datasets}")
        clip = candidates[0]
    if clip not in clips:
        raise ScenarioError(scenario, None, "source.clip", f"{clip!r} is not in {str(store)!r}; e.g. {sorted(clips)[:5]}")
    return clips[clip] | {"clip": clip}, meta["settings"]


# ----------------------------------------------------------------------------------------------
# The generator
# ----------------------------------------------------------------------------------------------


def finished(folder: Path, key: str) -> bool:
    """Whether ``folder`` holds a finished generation with this key (scenario, checkpoint, settings)."""
    try:
        return json.loads((folder / MANIFEST).read_text()).get("key") == key
    except (OSError, ValueError):
        return False


def output_key(scenario: Scenario, checkpoint_hash: str, cfg: GenerateConfig) -> str:
    blob = json.dumps({"scenario": scenario.digest(), "checkpoint": checkpoint_hash,
                       "settings": cfg.output_settings()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


class Generator:
    """Loads the checkpoint once; ``__call__(scenario_file)`` generates one scenario (numbered steps
    in the module doc) and returns a result row. Errors propagate; ``drivegen.generate.batch``
    turns them into report rows."""

    def __init__(self, cfg: GenerateConfig, checkpoint_hash: str | None = None) -> None:
        self.cfg = cfg
        self.device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available()
                                   else ("cpu" if cfg.device == "auto" else cfg.device))
        self.checkpoint = _check_checkpoint(cfg.checkpoint)
        self.checkpoint_hash = checkpoint_hash or checkpoint_digest(self.checkpoint, cfg.ema)
        self.train_cfg, self.model, self.vae = load_checkpoint(self.checkpoint, self.device, cfg.ema)
        from drivegen.objective import LatentSpace

        self.space = LatentSpace(self.vae)
        self.decoder = chopgrad_core.wrap(self.vae)
        self._logs: dict[tuple, Any] = {}

    # -- 1. scenario --------------------------------------------------------------------------

    def prepare_scenario(self, path: str | Path) -> tuple[Scenario, Path, str]:
        scenario = load_scenario(resolve_scenario_file(str(path)))
        folder = Path(self.cfg.out) / scenario.name
        return scenario, folder, output_key(scenario, self.checkpoint_hash, self.cfg)

    def _length(self, scenario: Scenario) -> int:
        return scenario.frames or self.cfg.length or self.train_cfg.data.clip_length

    def _log(self, attrs: dict, scenario: str):
        from drivegen.ingest import LogRef, open_log

        ref = LogRef(kind=attrs["log_kind"], path=str(_resolve(attrs["log_path"])), name=attrs["log"],
                     version=attrs.get("log_version"))
        key = (ref.kind, ref.path, ref.name)
        if key not in self._logs:
            if not Path(ref.path).exists():
                raise ScenarioError(scenario, None, "source.clip", f"the clip's log {ref.path!r} is missing (the "
                                    "store records where its logs were); restore it or point source.store elsewhere")
            self._logs = {key: open_log(ref)}  # one log at a time: a scene with its map can be large
        return self._logs[key]

    # -- 2.-6. -----------------------------------------------------------------------------------

    def __call__(self, path: str | Path) -> dict[str, Any]:
        t_start = time.perf_counter()
        # 1. Scenario, source clip, length; skip finished work.
        scenario, folder, key = self.prepare_scenario(path)
        if finished(folder, key):
            return {"scenario": scenario.name, "status": "skipped", "folder": str(folder), "seconds": 0.0}
        if scenario.text:
            field = "text." + sorted(scenario.text)[0]
            raise ScenarioError(scenario.name, None, field, "this checkpoint's model has no text conditioning (it "
                                "attends to learned null tokens in place of text); remove `text` from the scenario")
        data = self.train_cfg.data
        store = _resolve(scenario.source.store or data.store)
        attrs, settings = source_clip(store, scenario.source.clip, data.datasets, scenario.name)
        if list(settings["conditions"]["image_size"]) != list(data.image_size):
            raise ScenarioError(scenario.name, None, "source.store",
                                f"{str(store)!r} holds {settings['conditions']['image_size']} images; the checkpoint "
                                f"was trained at {list(data.image_size)}: use a store preprocessed at that size")
        num_frames = self._length(scenario)
        # 2. Scene: the log, edited.
        log = self._log(attrs, scenario.name)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            edited = apply_edits(scenario, log.scene, int(attrs["start_frame"]), num_frames, self.cfg.validation)
        # 3. Conditions of every frame.
        from drivegen.preprocess import ConditionsConfig, render_clip_arrays

        layout_cfg = ConditionsConfig(**settings["conditions"]).layout_config()
        cameras = list(attrs["cameras"])
        arrays, _ = render_clip_arrays(edited.scene, list(range(num_frames)), cameras, layout_cfg)
        # 4.-6. Latents, pixels, labels, manifest: into a temp folder, renamed into place at the end.
        tmp = folder.parent / f".{folder.name}.partial-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        try:
            stats = self._render(scenario, edited, arrays, cameras, tmp)
            manifest = {
                "scenario": scenario.name, "scenario_file": str(path), "scenario_hash": scenario.digest(),
                "scenario_parsed": scenario.to_dict(), "key": key,
                "checkpoint": str(self.checkpoint), "checkpoint_hash": self.checkpoint_hash,
                "seed": self._seed(scenario), "config": asdict(self.cfg),
                "source": {k: attrs[k] for k in ("clip", "log", "log_kind", "log_path", "start_frame")},
                "frames": num_frames, "cameras": cameras, "image_size": list(layout_cfg.image_size),
                "agents": {str(k): v for k, v in sorted(edited.names.items())},
                "edited_agents": sorted(edited.names[k] for k in edited.edited),
                "warnings": [str(w.message) for w in caught], "device": str(self.device),
                "seconds": round(time.perf_counter() - t_start, 3), **stats,
            }
            write_json_atomic(tmp / MANIFEST, manifest)  # last file: a folder with a manifest is finished
            old = folder.parent / f".{folder.name}.old-{uuid.uuid4().hex[:8]}"
            if folder.exists():
                os.replace(folder, old)
            os.replace(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return {"scenario": scenario.name, "status": "generated", "folder": str(folder),
                "seconds": manifest["seconds"], "frames": num_frames, "warnings": manifest["warnings"]}

    def _seed(self, scenario: Scenario) -> int:
        return self.cfg.sampler.seed if scenario.seed is None else scenario.seed

    def _chunk_latents(self, num_latent: int) -> int:
        frames = self.cfg.sampler.chunk_frames or self.train_cfg.data.clip_length
        chunk = (frames - 1) // 4 + 1
        if self.cfg.sampler.overlap >= min(chunk, num_latent) and num_latent > chunk:
            raise GenerateConfigError(f"sampler.overlap={self.cfg.sampler.overlap} must be below the chunk's {chunk} "
                                      f"latent frames (sampler.chunk_frames={frames})")
        return chunk

    def _render(self, scenario: Scenario, edited: EditedScene, arrays: dict, cameras: list[str], out: Path) -> dict:
        from drivegen.train.trainer import prepare_conditions

        cfg, device = self.cfg, self.device
        T = arrays["control"].shape[0]
        K = len(cameras)
        H, W = arrays["control"].shape[2:4]
        n = (T - 1) // 4 + 1
        s = self.vae.config.scale_factor_spatial if hasattr(self.vae.config, "scale_factor_spatial") else 8
        shape = (1, K, self.space.mean.shape[1], H // s, W // s)

        # 4. Latents, chunk by chunk; each chunk's conditions are those of pixel frames 4s..4(s+L-1).
        def inputs(start: int, length: int):
            frames = slice(4 * start, 4 * (start + length - 1) + 1)
            batch = _batch(arrays, frames)
            return prepare_conditions(batch, self.vae, self.space, device)

        chunk = self._chunk_latents(n)
        t0 = time.perf_counter()
        # bf16 autocast on CUDA, as training runs there; the scheduler steps in float32 (sample_latents).
        with torch.autocast("cuda", torch.bfloat16, enabled=device.type == "cuda"):
            latents = sample_video(self.model, inputs, shape, n, (H, W), chunk=chunk, overlap=cfg.sampler.overlap,
                                   steps=cfg.sampler.steps, seed=self._seed(scenario), shift=cfg.sampler.shift,
                                   guidance=cfg.sampler.guidance)
        sample_s = time.perf_counter() - t0

        # 5. Pixels: stream groups of frames into the mp4s, the mosaic and the dataroot's JPEGs.
        import cv2

        times = arrays["timestamp_us"]
        fps = cfg.video.fps or (int(round(1e6 / float(np.median(np.diff(times))))) if T > 1 else 12)
        name = scenario.name
        image_file = lambda cam, i: f"samples/{cam}/{name}__{cam}__{int(times[i])}.jpg"  # noqa: E731
        writers = [Mp4Writer(out / f"{cam}.mp4", fps) for cam in cameras]
        grid = Mp4Writer(out / "mosaic.mp4", fps)
        t0 = time.perf_counter()
        frame = 0
        ok = False
        try:
            z = self.space.denormalise(latents.flatten(0, 1).float())  # (K, C, t, h, w)
            for group in chopgrad_core.decode(self.decoder, z.to(next(self.vae.parameters()).dtype), stream=True):
                video = to_uint8(group.transpose(1, 2))  # (K, f, H, W, 3)
                f = video.shape[1]
                for k, cam in enumerate(cameras):
                    writers[k].append(video[k])
                    for j in range(f):
                        path = out / "nuscenes" / image_file(cam, frame + j)
                        path.parent.mkdir(parents=True, exist_ok=True)
                        okj, buf = cv2.imencode(".jpg", video[k, j][..., ::-1],
                                                [cv2.IMWRITE_JPEG_QUALITY, cfg.labels.jpeg_quality])
                        path.write_bytes(buf.tobytes())
                rows = [video.swapaxes(0, 1)]
                if cfg.video.controls:
                    rows.append(arrays["control"][frame:frame + f])  # (f, K, H, W, 3)
                grid.append(mosaic(rows))
                frame += f
            ok = True
        finally:
            for w in writers + [grid]:
                w.close(ok=ok)
        decode_s = time.perf_counter() - t0
        assert frame == T, (frame, T)
        import imageio.v2 as imageio

        imageio.imwrite(out / "conditions_frame0.png", mosaic([arrays["control"][:1]])[0])

        # 6. Labels: the edited scene as a nuScenes dataroot.
        from drivegen.nuscenes_format import write_scene_dataroot

        labels = cfg.labels
        scene = edited.scene
        cams = tuple(c for c in scene.cameras if c.name in cameras)
        scene = type(scene)(cameras=tuple(sorted(cams, key=lambda c: cameras.index(c.name))), frames=scene.frames,
                            map_elements=scene.map_elements, source=scene.source,
                            ground_height_m=scene.ground_height_m)
        write_scene_dataroot(out / "nuscenes", scene, version=labels.version, scene_name=name, location=labels.location,
                             keyframe_every=labels.keyframe_every, image_file=image_file, image_hw=(H, W),
                             description=f"drivegen generated: scenario {name}, edited agents "
                                         f"{sorted(edited.names[k] for k in edited.edited)}")
        return {"fps": fps, "latent_frames": n, "chunks": len(chunk_starts(n, min(chunk, n), cfg.sampler.overlap)),
                "sample_seconds": round(sample_s, 3), "decode_seconds": round(decode_s, 3),
                "labels": {"dataroot": "nuscenes", "version": labels.version, "scene": name}}


def _batch(arrays: dict, frames: slice) -> dict:
    """Rendered condition arrays (T leading) -> a ClipDataset-like batch of one clip (B = 1), without
    images (prepare_conditions does not read them)."""
    def t(name):
        return torch.from_numpy(np.ascontiguousarray(arrays[name][frames])).unsqueeze(0)

    control = t("control").permute(0, 1, 2, 5, 3, 4).float() / 127.5 - 1.0  # (B, T, K, 3, H, W)
    return {"control": control, "layout": t("layout"),
            "box_corners": t("box_corners"), "box_params": t("box_params"), "box_class": t("box_class"),
            "box_mask": t("box_mask"), "intrinsics": t("intrinsics"), "cam_to_ego": t("cam_to_ego")}
