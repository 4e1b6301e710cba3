"""One scenario -> videos, labels and a manifest: ``Generator(cfg)(scenario_file)``.

The Generator loads the checkpoint once (a Ray actor holds one) and runs scenarios in numbered steps:

1. Scenario: parse the file, resolve the source clip and the length, skip if already finished.
2. Scene: open the clip's log (map, ego path, agents) and apply the edits (drivegen.generate.scenario).
3. Conditions: render every frame of the edited scene with the store's conditions settings
   (drivegen.data.clips.render_clip_arrays, the same code that wrote the training store).
4. Latents: sample chunk by chunk (drivegen.model.sampler.sample_video); each chunk is
   conditioned as a training clip of its own (drivegen.model.conditioning.prepare_conditions).
5. Pixels: decode group by group (chopgrad_core.decode, stream=True) straight into the mp4
   writers and the dataroot's JPEGs, so memory does not grow with length.
6. Labels and manifest: the edited scene as a nuScenes dataroot, then manifest.json; the
   scenario's folder is renamed into place last (a folder with a manifest is finished). The
   manifest's ``box_recall`` says how far the labels can be trusted: the share of visible labelled
   boxes that the store's layout probe (drivegen.model.probe) finds with their class in the
   generated pixels; without a probe it says why it was not computed.

Outputs under ``out/<scenario name>/``: <camera>.mp4, mosaic.mp4 (generated row, control row),
nuscenes/ (dataroot: 13 tables, map expansion, the generated frames as camera images),
conditions_frame0.png, manifest.json.

Shape legend: B batch, K cameras, C channels, T frames, t latent frames, H W image size, h w latent size.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

import chopgrad_core
from chopgrad_core.atomic import atomic_dir, write_bytes, write_json, write_png
from chopgrad_core.video import Mp4Writer, mosaic, to_uint8
from drivegen.errors import GenerateConfigError, ScenarioError
from drivegen.generate.config import GenerateConfig
from drivegen.generate.scenario import EditedScene, Scenario, apply_edits, load_scenario
from drivegen.model.checkpoint import checkpoint_digest, load_trained
from drivegen.model.conditioning import batch_from_arrays, prepare_conditions
from drivegen.model.objective import LatentSpace
from drivegen.model.probe import FrameRecall
from drivegen.model.sampler import chunk_starts, sample_video

MANIFEST = "manifest.json"
SCENARIOS_DIR = Path(__file__).resolve().parent / "scenarios"


# ----------------------------------------------------------------------------------------------
# Source clips
# ----------------------------------------------------------------------------------------------


def resolve_scenario_file(path: str) -> Path:
    """A scenario file as given (relative to the working folder), else one of the scenarios shipped
    with drivegen (``drivegen/generate/scenarios/``, e.g. ``sample_edit.yaml``)."""
    p = Path(path).expanduser()
    return p if p.exists() or p.is_absolute() or not (SCENARIOS_DIR / p).exists() else SCENARIOS_DIR / p


def source_clip(store: Path, clip: str | None, datasets, scenario: str) -> tuple[dict, dict]:
    """(clip attrs, store settings) of the scenario's source clip."""
    from drivegen.data.store import CLIPS, FORMAT, open_root

    if not (store / "zarr.json").is_file():
        raise ScenarioError(scenario, None, "source.store", f"no clip store at {str(store)!r}; run `make train` "
                            "(it writes datasets/train_clips.zarr) or set source.store to a store written by python -m drivegen.preprocess")
    root = open_root(str(store))
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
        trained = load_trained(cfg.checkpoint, self.device, ema=cfg.ema, key="checkpoint")
        self.checkpoint, self.model, self.vae = trained.folder, trained.model, trained.vae
        self.checkpoint_hash = checkpoint_hash or checkpoint_digest(self.checkpoint, cfg.ema)
        self.data = trained.config["data"]  # the training run's data settings (store, clip length, ...)
        self.space = LatentSpace(self.vae)
        self.decoder = chopgrad_core.wrap(self.vae)
        self._logs: dict[tuple, Any] = {}

    # -- 1. scenario --------------------------------------------------------------------------

    def prepare_scenario(self, path: str | Path) -> tuple[Scenario, Path, str]:
        scenario = load_scenario(resolve_scenario_file(str(path)))
        folder = Path(self.cfg.out) / scenario.name
        return scenario, folder, output_key(scenario, self.checkpoint_hash, self.cfg)

    def _length(self, scenario: Scenario) -> int:
        return scenario.frames or self.cfg.length or self.data["clip_length"]

    def _log(self, attrs: dict, scenario: str):
        from drivegen.data.ingest import LogRef, open_log

        ref = LogRef(kind=attrs["log_kind"], path=str(Path(attrs["log_path"]).expanduser()), name=attrs["log"],
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
        data = self.data
        store = Path(scenario.source.store or data["store"]).expanduser()
        attrs, settings = source_clip(store, scenario.source.clip, data["datasets"], scenario.name)
        if list(settings["conditions"]["image_size"]) != list(data["image_size"]):
            raise ScenarioError(scenario.name, None, "source.store",
                                f"{str(store)!r} holds {settings['conditions']['image_size']} images; the checkpoint "
                                f"was trained at {list(data['image_size'])}: use a store preprocessed at that size")
        num_frames = self._length(scenario)
        # 2. Scene: the log, edited.
        log = self._log(attrs, scenario.name)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            edited = apply_edits(scenario, log.scene, int(attrs["start_frame"]), num_frames, self.cfg.validation)
        # 3. Conditions of every frame.
        from drivegen.data.clips import render_clip_arrays
        from drivegen.data.preprocess.config import ConditionsConfig

        layout_cfg = ConditionsConfig(**settings["conditions"]).layout_config()
        cameras = list(attrs["cameras"])
        arrays, _ = render_clip_arrays(edited.scene, list(range(num_frames)), cameras, layout_cfg)
        recall = FrameRecall(store, tuple(layout_cfg.image_size), self.device)  # labels against pixels
        # 4.-6. Latents, pixels, labels, manifest: into a temp folder, renamed into place at the end.
        with atomic_dir(folder) as tmp:
            stats = self._render(scenario, edited, arrays, cameras, tmp, recall)
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
            write_json(tmp / MANIFEST, manifest)  # last file: a folder with a manifest is finished
        return {"scenario": scenario.name, "status": "generated", "folder": str(folder),
                "seconds": manifest["seconds"], "frames": num_frames, "warnings": manifest["warnings"],
                "box_recall": manifest["box_recall"]["box_recall"]}

    def _seed(self, scenario: Scenario) -> int:
        return self.cfg.sampler.seed if scenario.seed is None else scenario.seed

    def _chunk_latents(self, num_latent: int) -> int:
        frames = self.cfg.sampler.chunk_frames or self.data["clip_length"]
        chunk = (frames - 1) // 4 + 1
        if self.cfg.sampler.overlap >= min(chunk, num_latent) and num_latent > chunk:
            raise GenerateConfigError(f"sampler.overlap={self.cfg.sampler.overlap} must be below the chunk's {chunk} "
                                      f"latent frames (sampler.chunk_frames={frames})")
        return chunk

    def _render(self, scenario: Scenario, edited: EditedScene, arrays: dict, cameras: list[str], out: Path,
                recall: FrameRecall) -> dict:
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
            batch = batch_from_arrays(arrays, frames)
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
                recall.add(video, *(arrays[k][frame:frame + f] for k in ("layout", "box_mask", "box_class")))
                for k, cam in enumerate(cameras):
                    writers[k].append(video[k])
                    for j in range(f):
                        path = out / "nuscenes" / image_file(cam, frame + j)
                        okj, buf = cv2.imencode(".jpg", video[k, j][..., ::-1],
                                                [cv2.IMWRITE_JPEG_QUALITY, cfg.labels.jpeg_quality])
                        write_bytes(path, buf.tobytes())
                rows = [video.swapaxes(0, 1)]
                if cfg.video.controls:
                    rows.append(arrays["control"][frame:frame + f])  # (f, K, H, W, 3)
                grid.append(mosaic(rows))
                frame += f
            ok = True
        finally:
            # Every writer is closed (or discarded) even when one of them fails to finish its file.
            errors = []
            for w in writers + [grid]:
                try:
                    w.close(ok=ok)
                except Exception as exc:  # noqa: PERF203
                    errors.append(exc)
            if errors and ok:
                raise errors[0]
        decode_s = time.perf_counter() - t0
        assert frame == T, (frame, T)
        write_png(out / "conditions_frame0.png", mosaic([arrays["control"][:1]])[0])

        # 6. Labels: the edited scene as a nuScenes dataroot.
        from drivegen.data.nuscenes_format import write_scene_dataroot

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
                "box_recall": recall.as_dict(),
                "labels": {"dataroot": "nuscenes", "version": labels.version, "scene": name}}
