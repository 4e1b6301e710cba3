"""Training checkpoints: versioned folders, written atomically, found again whatever was interrupted.

Layout under a run folder (``trainer.out``)::

    checkpoint-00000100/   model.safetensors (metadata: step, config, model_config), optimizer.safetensors,
                           ema.safetensors (if on), rng.safetensors, history.json, vae/ (if trained)
    checkpoint-00000150/
    latest                 the newest checkpoint's folder name (a convenience for people and tools)

Each folder is built under a temporary name and renamed into place (``chopgrad_core.atomic``), so a
folder named ``checkpoint-<step>`` is complete by construction; ``latest`` is rewritten after it.
``find_latest`` does not trust the pointer alone: it takes the highest step among the complete
folders, so a kill between any two steps of a save (inside the folder, before the rename, before
the pointer) resumes from the newest complete checkpoint. Replacing a folder of the same step
moves the old one aside first (``.checkpoint-<step>.<id>.old``): a kill between those two renames
leaves it there, and ``find_latest`` counts it; the next save puts it back or removes it, and
removes the temporary folders of killed saves. Only the last ``keep`` are kept.

Every folder holds ``manifest.json`` (each file's size and BLAKE2b checksum, written last inside
the temporary folder); ``load_tensors`` checks a file against it, so a truncated or bit-flipped
weight file is a CheckpointError naming the file, never silently wrong weights.

Paths in the saved config are absolute (``absolute_paths``), so a checkpoint works from any folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from chopgrad_core.atomic import atomic_dir, file_digest, hash_file, write_text
from drivegen.errors import CheckpointError
from drivegen.model.controlled_wan import ControlledWan, ModelConfig, apply_lora

__all__ = ["LATEST", "MANIFEST", "Trained", "check_guidance", "checkpoint_config", "checkpoint_digest", "find_latest",
           "flatten_optimizer", "load_tensors", "load_trained", "read_metadata", "remove_checkpoints", "resolve",
           "save_checkpoint", "unflatten_optimizer"]

LATEST = "latest"
MANIFEST = "manifest.json"
_NAME = re.compile(r"^checkpoint-(\d{8})$")
_ASIDE = re.compile(r"^\.(checkpoint-\d{8})\.[0-9a-f]+\.old$")  # chopgrad_core.atomic.atomic_dir's old copy
_TEMP = re.compile(r"^\.checkpoint-\d{8}\.[0-9a-f]+\.partial$")  # atomic_dir's folder of a killed save
# chopgrad_core.atomic's temporary files (the pointer, the run's history.json and loss.png): one
# writer per run folder, so any found when a save starts belong to a killed one.
_TEMP_FILE = re.compile(r"^\..+\.[0-9a-f]{8}\.partial(\.[A-Za-z0-9]+)?$")


def _name(step: int) -> str:
    return f"checkpoint-{step:08d}"


def _complete(out: Path) -> dict[int, Path]:
    """step -> folder, for every complete checkpoint under ``out`` (a folder set aside by a save
    of the same step that was killed between its two renames counts when its step has no other)."""
    found, aside = {}, {}
    if out.is_dir():
        for p in out.iterdir():
            m = _NAME.match(p.name) or _ASIDE.match(p.name)
            if m and p.is_dir() and (p / "model.safetensors").is_file():
                step = int(m.group(1)[len("checkpoint-"):]) if m.re is _ASIDE else int(m.group(1))
                (aside if m.re is _ASIDE else found)[step] = p
    return {**aside, **found}


def _tidy(out: Path) -> None:
    """Undo what killed saves left: temporary folders go, a folder set aside goes back in place
    (or goes, when its step was written again)."""
    if not out.is_dir():
        return
    for p in sorted(out.iterdir()):
        if _TEMP.match(p.name):
            shutil.rmtree(p, ignore_errors=True)
        elif _TEMP_FILE.match(p.name) and p.is_file():
            p.unlink(missing_ok=True)
        elif m := _ASIDE.match(p.name):
            final = out / m.group(1)
            if final.exists():
                shutil.rmtree(p, ignore_errors=True)
            elif (p / "model.safetensors").is_file():
                os.replace(p, final)


def _write_manifest(folder: Path) -> None:
    files = {str(f.relative_to(folder)): [f.stat().st_size, file_digest(f)]
             for f in sorted(folder.rglob("*")) if f.is_file() and f.name != MANIFEST}
    write_text(folder / MANIFEST, json.dumps({"checksum": "blake2b-128", "files": files}) + "\n")


def save_checkpoint(out: str | Path, step: int, write: Callable[[Path], None], keep: int = 3) -> Path:
    """``write(folder)`` fills a temporary folder, which (with its manifest) becomes
    ``out/checkpoint-<step>``; then the ``latest`` pointer; then all but the newest ``keep``
    checkpoints are removed."""
    out = Path(out)
    _tidy(out)
    with atomic_dir(out / _name(step)) as tmp:
        write(tmp)
        _write_manifest(tmp)
    final = out / _name(step)
    write_text(out / LATEST, final.name + "\n")
    if keep > 0:
        for old_step, folder in sorted(_complete(out).items())[:-keep]:
            if folder != final:
                # Renamed out of the way first (one atomic step), so that a kill during the
                # deletion never leaves a half-deleted folder under a checkpoint's name.
                doomed = out / f".{_name(old_step)}.{uuid.uuid4().hex[:8]}.partial"
                os.replace(folder, doomed)
                shutil.rmtree(doomed, ignore_errors=True)
    return final


def remove_checkpoints(out: str | Path) -> None:
    """Remove every checkpoint of the run folder ``out`` (``trainer.overwrite``: a fresh run must not
    resume the old run's later steps). Each folder is renamed out of the way first, then deleted."""
    out = Path(out)
    for old_step, folder in sorted(_complete(out).items()):
        doomed = out / f".{_name(old_step)}.{uuid.uuid4().hex[:8]}.partial"
        os.replace(folder, doomed)
        shutil.rmtree(doomed, ignore_errors=True)
    (out / LATEST).unlink(missing_ok=True)


def find_latest(out: str | Path) -> Path | None:
    """The newest complete checkpoint under the run folder ``out``, or None."""
    found = _complete(Path(out))
    return found[max(found)] if found else None


def resolve(path: str | Path, key: str) -> Path:
    """A checkpoint folder given as itself or as its run folder (then the newest one inside);
    otherwise a CheckpointError naming the config ``key``."""
    p = Path(path).expanduser()
    if (p / "model.safetensors").is_file():
        return p
    latest = find_latest(p)
    if latest is not None:
        return latest
    raise CheckpointError(f"{key}={str(path)!r} holds no checkpoint (no model.safetensors, no complete "
                          "checkpoint-<step>/ folder); run `make train` or `python -m drivegen.train` (they write "
                          "<trainer.out>/checkpoint-<step>/), or point the key at such a folder")


def _check_file(file: Path) -> None:
    """Compare ``file`` with the manifest of its checkpoint folder (the folder or the one above it;
    folders written before manifests existed have none, and are not checked)."""
    for folder in (file.parent, file.parent.parent):
        if (folder / MANIFEST).is_file():
            try:
                files = json.loads((folder / MANIFEST).read_text())["files"]
            except (OSError, ValueError, KeyError) as exc:
                raise CheckpointError(f"checkpoint manifest {str(folder / MANIFEST)!r} cannot be read ({exc}); the "
                                      "folder is damaged: resume from an earlier checkpoint-<step>/ folder or retrain") from None
            entry = files.get(str(file.relative_to(folder)))
            if entry is None:
                return
            size = file.stat().st_size
            if size != entry[0] or file_digest(file) != entry[1]:
                raise CheckpointError(f"checkpoint file {str(file)!r} does not match its manifest ({size} bytes, "
                                      f"{entry[0]} recorded, or a changed checksum): it is truncated or corrupt; "
                                      "resume from an earlier checkpoint-<step>/ folder or retrain")
            return


def load_tensors(file: str | Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors; a missing, corrupt or changed file is a CheckpointError naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        _check_file(Path(file))
        return load_file(str(file))
    except CheckpointError:
        raise
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"checkpoint file {str(file)!r} cannot be read ({exc}); it is truncated or corrupt: "
                              "resume from an earlier checkpoint-<step>/ folder or retrain") from None


def read_metadata(file: str | Path) -> dict[str, str]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(file), "pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"checkpoint file {str(file)!r} cannot be read ({exc}); it is truncated or corrupt: "
                              "resume from an earlier checkpoint-<step>/ folder or retrain") from None


def absolute_paths(config: dict, keys: tuple[tuple[str, str], ...] = (("data", "store"), ("data", "logs"))) -> dict:
    """A copy of a config dict with the path settings resolved against the current folder."""
    config = json.loads(json.dumps(config, default=str))
    for section, key in keys:
        value = config.get(section, {}).get(key)
        if value:
            config[section][key] = str(Path(value).expanduser().resolve())
    return config


@dataclass
class Trained:
    """What a training checkpoint holds, ready to sample from."""

    folder: Path
    config: dict[str, Any]
    """The training run's whole config (plain dicts; data paths absolute)."""
    model: ControlledWan
    vae: Any


def checkpoint_config(folder: Path) -> dict[str, Any]:
    """The training run's whole config that checkpoint ``folder`` was saved with (plain dicts)."""
    return json.loads(read_metadata(folder / "model.safetensors")["config"])


def check_guidance(folder: Path, guidance: float, key: str = "sampler.guidance",
                   config: dict[str, Any] | None = None) -> None:
    """Guidance extrapolates away from the null condition, which a model learns only when it was
    trained with ``objective.control_dropout`` > 0: refuse it otherwise (it would extrapolate from
    an output nothing trained). ``config``: the checkpoint ``folder``'s training config, when read."""
    if guidance == 1.0:
        return
    config = config if config is not None else checkpoint_config(folder)
    dropout = config.get("objective", {}).get("control_dropout", 0.1)
    if not dropout:
        raise CheckpointError(f"{key}={guidance} needs a model trained with objective.control_dropout > 0, and "
                              f"checkpoint {str(folder)!r} was trained with control_dropout={dropout}: set "
                              f"{key}=1 (no guidance) or train with objective.control_dropout=0.1")


def load_trained(path: str | Path, device: str | torch.device = "cpu", ema: bool = False,
                 key: str = "checkpoint") -> Trained:
    """The model and VAE a checkpoint (or the newest one of a run folder) left: the VAE is the
    checkpoint's own ``vae/`` (the tiny default's, fitted statistics and fine-tuned decoder
    included) or else the one of ``model.pretrained``. ``ema``: the averaged weights where saved.
    In eval mode, without gradients."""
    from diffusers import AutoencoderKLWan

    from drivegen.model.vae import load_pretrained, tiny_vae

    folder = resolve(path, key)
    meta = read_metadata(folder / "model.safetensors")
    try:
        config = json.loads(meta["config"])
        model_cfg = ModelConfig(**config["model"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{str(folder)!r} is not a drivegen.train checkpoint (its model.safetensors has no "
                              f"usable config: {exc}); point {key} at a folder written by drivegen.train") from None
    transformer, vae = load_pretrained(model_cfg.pretrained) if model_cfg.pretrained else (None, None)
    if (folder / "vae" / "config.json").is_file():
        for file in sorted((folder / "vae").glob("*.safetensors")):
            _check_file(file)
        try:
            vae = AutoencoderKLWan.from_pretrained(folder / "vae", local_files_only=True)
        except Exception as exc:  # diffusers / safetensors / JSON errors name no checkpoint
            raise CheckpointError(f"the VAE of checkpoint {str(folder)!r} ({str(folder / 'vae')!r}) cannot be loaded "
                                  f"({exc.__class__.__name__}: {exc}); it is truncated or corrupt: point {key} at an "
                                  "earlier checkpoint-<step>/ folder or retrain") from None
    model = ControlledWan(model_cfg, transformer)
    if config.get("trainer", {}).get("lora"):
        apply_lora(model, config["trainer"]["lora"])
    weights = folder / ("ema.safetensors" if ema and (folder / "ema.safetensors").is_file() else "model.safetensors")
    model.load_state_dict(load_tensors(weights))
    vae = vae if vae is not None else tiny_vae()
    return Trained(folder=folder, config=config, model=model.to(device).eval().requires_grad_(False),
                   vae=vae.to(device).eval().requires_grad_(False))


def checkpoint_digest(folder: Path, ema: bool) -> str:
    """sha256 over the weight files generation uses (model or EMA, and the VAE if saved there)."""
    h = hashlib.sha256()
    files = [folder / ("ema.safetensors" if ema and (folder / "ema.safetensors").is_file() else "model.safetensors")]
    files += sorted((folder / "vae").glob("*")) if (folder / "vae").is_dir() else []
    for f in files:
        h.update(f.name.encode())
        hash_file(f, h)
    return h.hexdigest()


def flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
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


def unflatten_optimizer(tensors: dict[str, torch.Tensor], layout: dict) -> dict:
    state = {int(pid): {name: tensors[f"{pid}.{name}"] if value is None else value for name, value in entry.items()}
             for pid, entry in layout["state"].items()}
    return {"state": state, "param_groups": layout["param_groups"]}
