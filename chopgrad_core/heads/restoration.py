"""One-step video restoration: a Wan transformer maps conditioning latents to clean latents in one step.

What every head shares (the heads differ only in conditioning, degradation and loss recipe):

1. the head turns a clean clip into a :class:`Sample`: what the user would give (``input``: the
   low-resolution, masked or degraded video), the plain ``baseline`` at the output size (bicubic
   upscaling, the masked input, the degraded render) and, for inpainting, the ``mask``;
2. the baseline is encoded by the (frozen) VAE encoder; its normalised latents, concatenated with
   the head's extra channels (inpainting: the mask on the latent grid), are the transformer's
   input channels. One step: a fixed timestep and no noise, so the prediction is deterministic;
3. the transformer predicts latents ``x_hat`` in one step, decoded by the causal VAE decoder;
4. loss = ``latent_weight`` * MSE(x_hat, normalised latents of the pixel target)
   + ``pixel_weight`` * :func:`chopgrad_core.pixel_loss` (decoded x_hat, pixel target), so the
   pixel loss costs constant memory in clip length (ChopGrad) and its gradient reaches the
   transformer and the decoder parameters that require grad.

Two output parameterisations (``model.output``):

- ``pixel_residual`` (default): the decoder decodes a *correction*: output = baseline +
  decode(x_hat), pixel target = clean - baseline (for l1 / mse exactly the loss on the output). The
  decoder's output convolution starts at zero, so training starts exactly at the baseline and
  only has to learn what the baseline gets wrong; it needs ``train_decoder``. This is what makes a
  tiny random-initialised VAE usable: it cannot reconstruct a video, but a fine-tuned decoder can
  learn corrections.
- ``latent_residual``: output = decode(x_hat), x_hat = latents of the baseline + the transformer's
  output (which starts at zero), pixel target = clean. For a pretrained VAE that reconstructs well.

Checkpoints are one self-contained safetensors file (:func:`save_head`, written atomically, and
:func:`load_head`, which raises ``CheckpointError`` naming a missing, damaged or foreign file).

Shape legend: B batch, c pixel channels, F frames, H W output size, C latent channels, E extra
condition channels, T latent frames, h w latent size.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import safetensors
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from torch import nn

import chopgrad_core
from chopgrad_core.atomic import save_safetensors
from chopgrad_core.config import ChopGradConfig
from chopgrad_core.errors import CheckpointError, HeadConfigError, ShapeError, WeightsNotFoundError

OUTPUTS = ("pixel_residual", "latent_residual")
CHECKPOINT_FORMAT = "chopgrad-head/1"


@dataclass(kw_only=True)
class HeadModelConfig:
    """The one-step restoration model (``model:`` in configs/finetune/finetune.yaml)."""

    vae: Optional[str] = None
    """Local diffusers folder of an AutoencoderKLWan (config.json + weights); null = a tiny
    random-initialised Wan 2.1 VAE (CPU runs and tests). Never downloaded."""
    num_attention_heads: int = 2
    """Heads of the Wan transformer (Wan 2.1 1.3B: 12)."""
    attention_head_dim: int = 12
    """Per-head width (Wan 2.1 1.3B: 128)."""
    num_layers: int = 2
    """Transformer blocks (Wan 2.1 1.3B: 30)."""
    ffn_dim: int = 32
    """Feed-forward width (Wan 2.1 1.3B: 8960)."""
    text_dim: int = 32
    """Width of the single learned context token that stands in for text."""
    timestep: float = 250.0
    """The fixed diffusion timestep the transformer is run at (one-step restoration)."""
    output: str = "pixel_residual"
    """pixel_residual: output = baseline + decode(x_hat); latent_residual: output = decode(x_hat)."""
    train_decoder: bool = True
    """Fine-tune the VAE decoder's parameters too (pixel_loss sends gradients into them)."""

    def __post_init__(self) -> None:
        if self.output not in OUTPUTS:
            raise HeadConfigError(f"model.output={self.output!r} is unknown; choose one of {', '.join(OUTPUTS)}")
        if self.output == "pixel_residual" and not self.train_decoder:
            raise HeadConfigError("model.output=pixel_residual needs model.train_decoder=true (the decoder learns to "
                                "decode corrections); or set model.output=latent_residual")
        sizes = {k: getattr(self, k) for k in ("num_attention_heads", "attention_head_dim", "num_layers", "ffn_dim",
                                                "text_dim")}
        bad = [f"model.{k}={v}" for k, v in sizes.items() if v < 1]
        if bad:
            raise HeadConfigError(f"{', '.join(bad)}: model sizes must be >= 1")


@dataclass(kw_only=True)
class HeadConfig:
    """What every task config has (``configs/finetune/task/*.yaml``): its name and loss recipe."""

    name: str
    """The task: sr, inpaint or enhance."""
    pixel_weight: float = 1.0
    """Weight of the ChopGrad pixel loss (chopgrad.loss) on the decoded prediction."""
    latent_weight: float = 0.1
    """Weight of the MSE between predicted latents and the latents of the pixel target."""

    def __post_init__(self) -> None:
        if self.pixel_weight < 0 or self.latent_weight < 0 or self.pixel_weight + self.latent_weight == 0:
            raise HeadConfigError(f"task.pixel_weight={self.pixel_weight} and task.latent_weight={self.latent_weight} "
                                "must be >= 0 and not both 0")


@dataclass
class Sample:
    """One batch as a head sees it; frames in [-1, 1]."""

    input: torch.Tensor
    """(B c F h' w') what the user gives: low-resolution (sr), masked (inpaint) or degraded (enhance)."""
    baseline: torch.Tensor
    """(B c F H W) the plain restoration at the output size."""
    mask: Optional[torch.Tensor] = None
    """(B 1 F H W) 1 where pixels are missing (inpaint only)."""

    def to(self, device: torch.device | str) -> Sample:
        return Sample(self.input.to(device), self.baseline.to(device),
                      None if self.mask is None else self.mask.to(device))


class Head:
    """A task: conditioning scheme + degradation pipeline + loss recipe. See sr.py, inpaint.py, enhance.py."""

    name = "?"
    #: What the plain baseline is, for tables.
    baseline_name = "?"
    #: Condition channels the head adds beside the baseline's latents.
    extra_channels = 0

    def __init__(self, config: HeadConfig) -> None:
        self.config = config

    def degrade(self, clean: torch.Tensor, g: torch.Generator | None) -> Sample:
        """A training sample made from clean frames (B c F H W)."""
        raise NotImplementedError

    def prepare(self, input: torch.Tensor, mask: torch.Tensor | None = None) -> Sample:
        """A sample from what a user gives (restore time)."""
        return Sample(input=input, baseline=input)

    def extras(self, sample: Sample, latent_shape: tuple[int, ...]) -> torch.Tensor | None:
        """Extra condition channels (B E T h w) on the latent grid, or None."""
        return None

    def finish(self, output: torch.Tensor, sample: Sample) -> torch.Tensor:
        """Post-processing of the model's output (inpaint: known pixels are kept)."""
        return output


# ----------------------------------------------------------------------------------------------
# Frames the VAE accepts, and the latent grid
# ----------------------------------------------------------------------------------------------


def check_frames(num_frames: int, source: str, temporal: int = 4) -> None:
    """The Wan VAE encodes 1 + 4k frames; anything else is refused, naming where it came from."""
    if num_frames < 1 or (num_frames - 1) % temporal:
        lo = 1 + temporal * max(0, (num_frames - 1) // temporal)
        raise ShapeError(
            f"{source} has {num_frames} frames; the Wan VAE accepts 1 + {temporal}k frames "
            f"(e.g. {lo} or {lo + temporal}): trim the video (restore --trim) or choose data.frames accordingly"
        )


def pool_to_latent(x_BEFHW: torch.Tensor, latent_frames: int, latent_hw: tuple[int, int]) -> torch.Tensor:
    """Frames (B E F H W) -> the latent grid (B E T h w), as Wan's VAE groups them.

    Latent frame 0 covers frame 0 and latent frame t >= 1 frames 4t-3..4t; each value is the mean
    over its frames and over each latent pixel's area.
    """
    b, e, f, h, w = x_BEFHW.shape
    first, rest = x_BEFHW[:, :, :1], x_BEFHW[:, :, 1:]
    if rest.shape[2]:
        rest = rest.reshape(b, e, latent_frames - 1, (f - 1) // (latent_frames - 1), h, w).mean(dim=3)
    x = torch.cat([first, rest], dim=2).float()  # (B E T H W)
    x = F.adaptive_avg_pool2d(x.flatten(1, 2), latent_hw)
    return x.reshape(b, e, latent_frames, *latent_hw)


# ----------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------


def load_vae(path: str | None):
    """The VAE: a local diffusers AutoencoderKLWan folder, or (None) a tiny random one."""
    from diffusers import AutoencoderKLWan

    if path is None:
        from chopgrad_core.tiny import tiny_wan21

        vae = tiny_wan21()
        # Wan's published latents_mean/std describe the trained VAE; a random encoder's latents are
        # centred with std ~0.1, so the transformer would see near-constant inputs after Wan's
        # normalisation. Calibrated statistics give it unit-scale inputs.
        vae.register_to_config(latents_mean=[0.0] * vae.config.z_dim, latents_std=[0.1] * vae.config.z_dim)
        return vae
    if not (Path(path) / "config.json").is_file():
        raise WeightsNotFoundError(f"model.vae={path!r} is not a local diffusers AutoencoderKLWan folder "
                                   "(no config.json); set model.vae to one, or null for a tiny random VAE")
    return AutoencoderKLWan.from_pretrained(path)


class OneStepRestorer(nn.Module):
    """VAE + Wan transformer + a learned context token: conditioning latents -> clean latents."""

    def __init__(self, config: HeadModelConfig, extra_channels: int, vae: nn.Module | None = None) -> None:
        from diffusers import WanTransformer3DModel

        super().__init__()
        self.config, self.extra_channels = config, extra_channels
        self.vae = (vae if vae is not None else load_vae(config.vae)).eval().requires_grad_(False)
        if config.train_decoder:
            self.vae.decoder.requires_grad_(True)
            self.vae.post_quant_conv.requires_grad_(True)
        self.decoder = chopgrad_core.wrap(self.vae)
        c = self.decoder.latent_channels
        self.transformer = WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=config.num_attention_heads,
            attention_head_dim=config.attention_head_dim, in_channels=c + extra_channels, out_channels=c,
            text_dim=config.text_dim, ffn_dim=config.ffn_dim, num_layers=config.num_layers)
        self.null_text = nn.Parameter(torch.randn(1, 1, config.text_dim) * 0.02)
        # Zero-initialised output, so training starts at the baseline: pixel_residual zeroes the
        # decoder's last convolution (decode(anything) = 0 at first; it gets gradient at once and
        # the transformer from the next step on, as a zero-initialised ControlNet branch does);
        # latent_residual zeroes the transformer's projection (x_hat = the baseline's latents).
        head = self.vae.decoder.conv_out if config.output == "pixel_residual" else self.transformer.proj_out
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
        vc = self.vae.config
        self.register_buffer("mean", torch.tensor(vc.latents_mean[:c]).view(1, c, 1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(vc.latents_std[:c]).view(1, c, 1, 1, 1), persistent=False)

    # -- sizes --------------------------------------------------------------------------------

    @property
    def size_multiple(self) -> int:
        """Output height and width must be multiples of this (VAE scale x transformer patch)."""
        return self.decoder.spatial_scale * 2

    # -- latents ------------------------------------------------------------------------------

    @torch.no_grad()
    def encode(self, frames_BcFHW: torch.Tensor) -> torch.Tensor:
        """Normalised latents (B C T h w) of frames; the encoder is frozen."""
        check_frames(frames_BcFHW.shape[2], "the clip")
        z = self.vae.encode(frames_BcFHW.to(device=self.mean.device, dtype=self.vae.dtype)).latent_dist.mode()
        return (z - self.mean) / self.std

    def denormalise(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.std + self.mean

    def predict(self, sample: Sample, head: Head) -> torch.Tensor:
        """x_hat (B C T h w), normalised latents of the pixel target, in one transformer step."""
        h, w = sample.baseline.shape[-2:]
        m = self.size_multiple
        if h % m or w % m:
            raise ShapeError(f"frames of {h}x{w} pixels: height and width must be multiples of {m} "
                             f"(VAE scale {self.decoder.spatial_scale} x patch 2); crop or pad them")
        z = self.encode(sample.baseline)
        extra = head.extras(sample, tuple(z.shape))
        x = z if extra is None else torch.cat([z, extra.to(z)], dim=1)  # (B C+E T h w)
        b = x.shape[0]
        out = self.transformer(hidden_states=x, timestep=torch.full((b,), self.config.timestep, device=x.device),
                               encoder_hidden_states=self.null_text.expand(b, -1, -1), return_dict=False)[0]
        return out if self.config.output == "pixel_residual" else z + out

    def pixel_target(self, clean: torch.Tensor, sample: Sample) -> torch.Tensor:
        return clean - sample.baseline if self.config.output == "pixel_residual" else clean

    # -- training and inference ----------------------------------------------------------------

    def losses(self, head: Head, sample: Sample, clean: torch.Tensor, chopgrad: ChopGradConfig) -> dict[str, torch.Tensor]:
        """Latent and ChopGrad pixel losses of one batch; ``total`` is what to back-propagate."""
        x_hat = self.predict(sample, head)
        target = self.pixel_target(clean, sample)
        out: dict[str, torch.Tensor] = {}
        total = x_hat.new_zeros((), dtype=torch.float32)
        if head.config.latent_weight > 0:
            out["latent"] = F.mse_loss(x_hat.float(), self.encode(target).float())
            total = total + head.config.latent_weight * out["latent"]
        if head.config.pixel_weight > 0:
            out["pixel"] = chopgrad_core.pixel_loss(self.decoder, self.denormalise(x_hat), target,
                                                    **chopgrad.pixel_loss_kwargs())
            total = total + head.config.pixel_weight * out["pixel"]
        out["total"] = total
        return out

    @torch.no_grad()
    def restore(self, head: Head, sample: Sample) -> torch.Tensor:
        """The restored frames (B c F H W) in [-1, 1]."""
        x_hat = self.predict(sample, head)
        decoded = chopgrad_core.decode(self.decoder, self.denormalise(x_hat))
        base = sample.baseline.to(decoded) if self.config.output == "pixel_residual" else 0.0
        return head.finish((base + decoded).clamp(-1, 1), sample)


# ----------------------------------------------------------------------------------------------
# Checkpoints: one self-contained safetensors file
# ----------------------------------------------------------------------------------------------


def save_head(path: str | Path, model: OneStepRestorer, head: Head, extra: dict | None = None) -> Path:
    """Transformer, context token and the whole VAE (fine-tuned decoder, frozen encoder) plus the
    configs in the file's metadata, so :func:`load_head` needs nothing else. Atomic
    (``chopgrad_core.atomic``): a crash never leaves a truncated checkpoint under ``path``."""
    meta = {"format": CHECKPOINT_FORMAT, "task": json.dumps(asdict(head.config)),
            "model": json.dumps(asdict(model.config)),
            # Without "_use_default_values", from_config would reset those keys to the class defaults
            # (it would undo the tiny VAE's calibrated latents_mean/std).
            "vae_config": json.dumps({k: v for k, v in dict(model.vae.config).items() if k != "_use_default_values"}),
            "extra": json.dumps(extra or {})}
    return save_safetensors(model.state_dict(), path, meta)


def load_head(path: str | Path, device: str | torch.device = "cpu") -> tuple[OneStepRestorer, Head, dict]:
    """(model, head, extra) from a file written by :func:`save_head`.

    A missing, truncated or foreign file raises :class:`CheckpointError` naming it."""
    from diffusers import AutoencoderKLWan

    from chopgrad_core.heads import make_head

    path = Path(path)
    retrain = ("train one with python -m chopgrad_core.heads.finetune (it writes <train.out>/head.safetensors) "
               "and pass that file")
    if not path.is_file():
        raise CheckpointError(f"head checkpoint {str(path)!r} does not exist or is not a file; {retrain}")
    try:
        with safetensors.safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as e:  # truncated, or not safetensors at all
        raise CheckpointError(f"head checkpoint {str(path)!r} cannot be read ({type(e).__name__}: {e}); the file "
                              f"is damaged or not a safetensors file: {retrain}") from e
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{str(path)!r} is not a chopgrad_core head checkpoint (format {meta.get('format')!r}, "
                              f"expected {CHECKPOINT_FORMAT!r}); {retrain}")
    try:
        head = make_head(json.loads(meta["task"]))
        vae = AutoencoderKLWan.from_config(json.loads(meta["vae_config"]))
        model = OneStepRestorer(HeadModelConfig(**json.loads(meta["model"])), head.extra_channels, vae=vae)
        model.load_state_dict(state, strict=True)
        extra = json.loads(meta.get("extra", "{}"))
    except (KeyError, TypeError, ValueError, RuntimeError) as e:  # metadata or tensors of another version
        raise CheckpointError(f"head checkpoint {str(path)!r} does not match this code ({type(e).__name__}: "
                              f"{str(e)[:300]}); {retrain}") from e
    return model.to(device).eval(), head, extra
