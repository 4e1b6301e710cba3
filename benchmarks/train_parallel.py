"""Multi-GPU training through the real CLI: ``torchrun --nproc_per_node=N -m drivegen.train``.

Named scenarios (``--scenario``); each runs ``drivegen.train`` once per case, on one GPU and on
two, in the same call on the same host, and reads step time and peak memory from the run's own
``history.json`` (``step_s``, ``max_mem_gib`` of rank 0; the first step is a warm-up and left out):

- ``h200x2``: the Wan 2.1 VACE 1.3B preset (``model=wan2.1_vace_1.3b``: 30 blocks + 15 VACE
  blocks, 12 heads x 128, random weights written once as a local ``model.pretrained`` folder with
  the full Wan 2.1 VAE, frozen), ``trainer=gpu`` (bf16, gradient checkpointing), ChopGrad pixel
  loss on every frame (``chopgrad=low_memory``), six nuScenes-rig cameras.
  ``cp``: 480x832, one clip per step; 1 GPU against 2 GPUs with ``trainer.context_parallel=2``
  (Ulysses attention over the token halves, three cameras' VAE work each).
  ``dp``: 256x448; 1 GPU with one clip per step against 2 GPUs with two (one each, FSDP2).
- ``cpu-tiny``: the tiny model on the CPU with gloo (cases as above at 32x48): checks the
  script end to end where there is no GPU; its times mean nothing.

Stores are built on the CPU beforehand (the GPU machines have no Ray), e.g.::

    python -m drivegen.preprocess input_root=datasets/sample/nuscenes out=.bench/cp_480x832_f17.zarr \\
        clip.length=17 clip.stride=41 conditions.image_size=[480,832] conditions.bev=false
    python -m drivegen.preprocess input_root=datasets/sample/nuscenes out=.bench/dp_256x448_f5.zarr \\
        clip.length=5 clip.stride=20 conditions.image_size=[256,448] conditions.bev=false

The sample logs hold 43 frames per camera, so the longest clip they give is 41 frames; the
carried store's size (<= 64 MiB with the wheels) set 17 frames at 480x832 here.

MFU counts the transformer's model FLOPs (matmuls 6 x tokens x block parameters, self-attention
12 x tokens^2 x width per block, forward + backward, without the recomputation of gradient
checkpointing) over the whole step's time and the GPUs' dense bf16 peak (H200: 989 TFLOP/s): a
lower bound, since the step also holds the VAE encoding and the ChopGrad decoder.

    python benchmarks/train_parallel.py --scenario h200x2 [--only cp|dp]

Writes ``benchmarks/results/train_parallel_<scenario>_<date>.json`` (and a copy under $OUT when
set) and prints a table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PEAK_BF16 = {"cuda": 989e12}  # H100 / H200 SXM dense bf16


@dataclass(frozen=True)
class Case:
    name: str
    store: str
    image_hw: tuple[int, int]
    clip_length: int
    gpus: int
    batch_size: int
    context_parallel: int = 1


@dataclass(frozen=True)
class Scenario:
    model: str  # configs/model preset
    trainer: str  # configs/trainer preset
    chopgrad: str
    device: str
    steps: int
    cases: tuple[Case, ...]
    pretrained: bool  # write random weights (and the full Wan 2.1 VAE) as a local pretrained folder


def _cases(cp_store, dp_store, cp_hw, dp_hw, cp_len, dp_len):
    return (Case("cp", cp_store, cp_hw, cp_len, gpus=1, batch_size=1),
            Case("cp", cp_store, cp_hw, cp_len, gpus=2, batch_size=1, context_parallel=2),
            Case("dp", dp_store, dp_hw, dp_len, gpus=1, batch_size=1),
            Case("dp", dp_store, dp_hw, dp_len, gpus=2, batch_size=2))


SCENARIOS = {
    "h200x2": Scenario(model="wan2.1_vace_1.3b", trainer="gpu", chopgrad="low_memory", device="cuda", steps=3,
                       pretrained=True,
                       cases=_cases(".bench/cp_480x832_f17.zarr", ".bench/dp_256x448_f5.zarr", (480, 832), (256, 448),
                                    17, 5)),
    "cpu-tiny": Scenario(model="tiny", trainer="cpu", chopgrad="default", device="cpu", steps=3, pretrained=False,
                         cases=_cases("datasets/train_clips_32x48.zarr", "datasets/train_clips_32x48.zarr", (32, 48),
                                      (32, 48), 5, 5)),
}


def write_random_pretrained(folder: Path, preset: str) -> None:
    """``transformer/`` (random weights of the preset's shapes, bf16 on disk) and ``vae/`` (the
    default AutoencoderKLWan: the Wan 2.1 VAE's shapes): what ``model.pretrained`` loads."""
    import torch
    import yaml
    from diffusers import AutoencoderKLWan, WanVACETransformer3DModel

    if (folder / "transformer" / "config.json").is_file():
        return
    m = yaml.safe_load((ROOT / "configs" / "model" / f"{preset}.yaml").read_text())
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):  # random init on the GPU: seconds
        transformer = WanVACETransformer3DModel(
            num_attention_heads=m["num_attention_heads"], attention_head_dim=m["attention_head_dim"],
            in_channels=m["latent_channels"], out_channels=m["latent_channels"], text_dim=m["text_dim"],
            ffn_dim=m["ffn_dim"], num_layers=m["num_layers"], vace_layers=m["vace_layers"],
            vace_in_channels=m["latent_channels"] + m["layout_channels"])
        vae = AutoencoderKLWan()
    transformer.to(torch.bfloat16).save_pretrained(folder / "transformer")
    vae.save_pretrained(folder / "vae")


def transformer_flops(preset: str, tokens: int, context: int) -> float:
    """Model FLOPs of one forward + backward of the transformer (see the module docstring)."""
    import yaml

    m = yaml.safe_load((ROOT / "configs" / "model" / f"{preset}.yaml").read_text())
    d, f = m["num_attention_heads"] * m["attention_head_dim"], m["ffn_dim"]
    blocks = m["num_layers"] + len(m["vace_layers"])
    per_block = 8 * d * d + 2 * d * f + d * d * (len(m["vace_layers"]) / blocks)  # q k v o x2, ffn, VACE out proj
    matmul = 6 * tokens * per_block * blocks
    attention = 12 * tokens * tokens * d * blocks + 12 * tokens * context * d * blocks
    return matmul + attention


def run_case(s: Scenario, case: Case, work: Path, pretrained: Path | None, out_root: Path) -> dict:
    out = out_root / f"{case.name}_{case.gpus}gpu"
    shutil.rmtree(out, ignore_errors=True)
    overrides = [f"model={s.model}", f"trainer={s.trainer}", f"chopgrad={s.chopgrad}",
                 f"data.store={ROOT / case.store}", f"data.image_size=[{case.image_hw[0]},{case.image_hw[1]}]",
                 f"data.clip_length={case.clip_length}", f"data.batch_size={case.batch_size}",
                 f"trainer.steps={s.steps}", f"trainer.out={out}", "trainer.resume=null", "trainer.overwrite=true",
                 "trainer.sample_steps=0", "trainer.tensorboard=false", "trainer.save_every=0",
                 "trainer.val_every=0", "trainer.lr_warmup=0", f"trainer.context_parallel={case.context_parallel}"]
    if pretrained is not None:
        overrides.append(f"model.pretrained={pretrained}")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={case.gpus}",
           "-m", "drivegen.train", *overrides]
    print("$", " ".join(cmd), flush=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    row = dict(case=case.name, gpus=case.gpus, context_parallel=case.context_parallel, batch=case.batch_size,
               image_hw=list(case.image_hw), frames=case.clip_length, ok=proc.returncode == 0)
    if proc.returncode != 0:
        row["error"] = (proc.stdout[-1500:] + proc.stderr[-3000:])
        print(row["error"], flush=True)
        return row
    history = json.loads((out / "history.json").read_text())
    timed = history[1:] or history
    row |= dict(step_s=sum(r["step_s"] for r in timed) / len(timed), first_step_s=history[0]["step_s"],
                losses=[round(r["total"], 5) for r in history])
    if "max_mem_gib" in history[-1]:
        row["peak_gib"] = round(max(r["max_mem_gib"] for r in history), 2)
    shutil.rmtree(out, ignore_errors=True)  # checkpoints of a 2B-parameter model: tens of GB
    return row


def summarise(rows: list[dict], s: Scenario) -> None:
    """Speed-ups against the one-GPU case of the same name (DP: clips per second), and MFU."""
    for row in rows:
        base = next((r for r in rows if r["case"] == row["case"] and r["gpus"] == 1 and r.get("ok")), None)
        if not row.get("ok"):
            continue
        row["clips_per_s"] = round(row["batch"] / row["step_s"], 4)
        h, w = row["image_hw"]
        latent_frames = (row["frames"] - 1) // 4 + 1
        tokens = latent_frames * (h // 16) * (6 * w // 16)  # 6 cameras tiled along width
        row["tokens_per_clip"] = tokens
        if s.device in PEAK_BF16:
            flops = transformer_flops(s.model, tokens, context=1 + 6 + 6 * latent_frames * 64)
            row["mfu_transformer"] = round(flops * row["batch"] / (row["step_s"] * row["gpus"] * PEAK_BF16[s.device]), 4)
        if base:
            row["time_vs_1gpu"] = round(row["step_s"] / base["step_s"], 3)
            row["throughput_vs_1gpu"] = round(row["clips_per_s"] / base["clips_per_s"], 3)


def save(args, result: dict) -> None:
    """After every case: a run cut short keeps what it measured."""
    name = f"train_parallel_{args.scenario}_{result['date']}.json"
    for folder in [Path(args.results)] + ([Path(os.environ["OUT"])] if os.environ.get("OUT") else []):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(json.dumps(result, indent=2) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", default="cpu-tiny", choices=sorted(SCENARIOS))
    ap.add_argument("--only", choices=["cp", "dp"], help="run one pair of cases")
    ap.add_argument("--work", default=None, help="scratch folder (random weights, run outputs); default: a temp folder")
    ap.add_argument("--results", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    s = SCENARIOS[args.scenario]
    work = Path(args.work or tempfile.mkdtemp(prefix="train_parallel_"))
    work.mkdir(parents=True, exist_ok=True)
    pretrained = None
    if s.pretrained:
        pretrained = work / "pretrained"
        write_random_pretrained(pretrained, s.model)
    hardware = "cpu"
    try:
        import torch

        if torch.cuda.is_available():
            hardware = f"{torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    except ImportError:
        pass
    rows = []
    for case in s.cases:
        if args.only and case.name != args.only:
            continue
        rows.append(run_case(s, case, work, pretrained, work / "runs"))
        summarise(rows, s)
        save(args, dict(scenario=args.scenario, date=dt.date.today().isoformat(), hardware=hardware, rows=rows))
    print(f"\n{hardware}")
    print("| case | GPUs | cp | batch | step s | vs 1 GPU | clips/s | throughput vs 1 GPU | peak GiB | MFU |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if not r.get("ok"):
            print(f"| {r['case']} | {r['gpus']} | {r['context_parallel']} | {r['batch']} | failed | | | | | |")
            continue
        print(f"| {r['case']} {r['image_hw'][0]}x{r['image_hw'][1]}x{r['frames']} | {r['gpus']} | "
              f"{r['context_parallel']} | {r['batch']} | {r['step_s']:.2f} | {r.get('time_vs_1gpu', '')} | "
              f"{r.get('clips_per_s', '')} | {r.get('throughput_vs_1gpu', '')} | {r.get('peak_gib', '')} | "
              f"{r.get('mfu_transformer', '')} |")


if __name__ == "__main__":
    main()
