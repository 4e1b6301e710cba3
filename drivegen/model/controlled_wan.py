"""The controlled multi-camera video diffusion model: diffusers' Wan VACE transformer plus the
embeddings that turn driving conditions into its inputs.

Built from diffusers parts, not re-implemented: the backbone is ``WanVACETransformer3DModel``
(Wan's DiT with the VACE control branch over ``vace_layers``), so real Wan / VACE weights from a
local directory load unchanged; the VAE is ``AutoencoderKLWan``.

Conditions and where they enter:

1. layout -> control branch: per camera, the VAE latents of the coloured control video (16 ch)
   concatenated with the semantic layout raster area-pooled to the latent grid (one latent frame
   per frame group) form ``control_hidden_states`` (``vace_in_channels`` = 16 + layout channels).
2. boxes and cameras -> cross-attention: every box token (projected corners and 3D parameters,
   Fourier-embedded, plus class, camera and latent-frame embeddings; MagicDrive's scheme) and one
   token per camera (intrinsics and extrinsics) are projected to ``text_dim`` and attended to in
   place of, or beside, text embeddings. Empty box slots become a learned pad token; without text
   a learned null token keeps the context non-empty.
3. multiple cameras see each other through *joint attention over views*: the K cameras of an
   instant are tiled side by side along the width of the latent, (B, C, T, h, K*w), so Wan's full
   3D self-attention spans all views and frames. Why: it reuses Wan's attention and RoPE
   unchanged (pretrained weights stay meaningful, neighbouring views share image borders as in a
   panorama), and it is exact cross-view interaction rather than an added cross-view module. The
   cost is attention over K times more tokens; measured in benchmarks/train_step.py.

Shape legend: B batch, K cameras, C latent channels, T latent frames, h w latent size, S box
slots per camera and latent frame, P box parameters, L context tokens, D text_dim.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from diffusers import WanVACETransformer3DModel
from torch import nn

from drivegen.errors import ConfigError

# ----------------------------------------------------------------------------------------------
# Camera tiling: joint attention over views
# ----------------------------------------------------------------------------------------------


def tile_cameras(x_BKCThw: torch.Tensor) -> torch.Tensor:
    """(B, K, C, T, h, w) -> (B, C, T, h, K*w): cameras side by side along the width."""
    b, k, c, t, h, w = x_BKCThw.shape
    return x_BKCThw.permute(0, 2, 3, 4, 1, 5).reshape(b, c, t, h, k * w)


def untile_cameras(x_BCThKw: torch.Tensor, num_cameras: int) -> torch.Tensor:
    """(B, C, T, h, K*w) -> (B, K, C, T, h, w)."""
    b, c, t, h, kw = x_BCThKw.shape
    w = kw // num_cameras
    return x_BCThKw.reshape(b, c, t, h, num_cameras, w).permute(0, 4, 1, 2, 3, 5)


# ----------------------------------------------------------------------------------------------
# Condition embeddings
# ----------------------------------------------------------------------------------------------


def fourier(x: torch.Tensor, num_freqs: int) -> torch.Tensor:
    """NeRF-style Fourier features of the last axis: (..., n) -> (..., n * (2 * num_freqs + 1))."""
    freqs = (2.0 ** torch.arange(num_freqs, device=x.device, dtype=x.dtype)) * math.pi
    xf = x.unsqueeze(-1) * freqs  # (..., n, F)
    return torch.cat([x.unsqueeze(-1), xf.sin(), xf.cos()], dim=-1).flatten(-2)


class BoxEmbedding(nn.Module):
    """Box tokens -> context tokens (MagicDrive: Fourier-embedded corners + class embedding)."""

    def __init__(self, dim: int, num_classes: int, num_params: int, max_cameras: int, max_frames: int,
                 num_freqs: int = 4) -> None:
        super().__init__()
        self.num_freqs = num_freqs
        geo = (16 + num_params) * (2 * num_freqs + 1)
        self.mlp = nn.Sequential(nn.Linear(geo, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.class_embed = nn.Embedding(num_classes, dim)
        self.camera_embed = nn.Embedding(max_cameras, dim)
        self.frame_embed = nn.Embedding(max_frames, dim)
        self.pad = nn.Parameter(torch.zeros(dim))  # stands for every empty slot

    def forward(self, corners_BKTS82, params_BKTSP, class_BKTS, mask_BKTS) -> torch.Tensor:
        b, k, t, s = class_BKTS.shape
        if t > self.frame_embed.num_embeddings:
            raise ConfigError(f"{t} latent frames exceed model.max_latent_frames={self.frame_embed.num_embeddings}; "
                             "raise model.max_latent_frames")
        geo = torch.cat([corners_BKTS82.flatten(-2), params_BKTSP], dim=-1).float()
        tok = self.mlp(fourier(geo, self.num_freqs))
        tok = tok + self.class_embed(class_BKTS.clamp_min(0))
        tok = tok + self.camera_embed(torch.arange(k, device=tok.device)).view(1, k, 1, 1, -1)
        tok = tok + self.frame_embed(torch.arange(t, device=tok.device)).view(1, 1, t, 1, -1)
        tok = torch.where(mask_BKTS.unsqueeze(-1), tok, self.pad.to(tok.dtype))
        return tok.reshape(b, k * t * s, -1)  # (B, K*T*S, D)


class CameraEmbedding(nn.Module):
    """One token per camera from its normalised intrinsics and camera-to-ego extrinsics."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(4 + 12, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, intrinsics_BK33, cam_to_ego_BK44, image_hw: tuple[int, int]) -> torch.Tensor:
        h, w = image_hw
        k = intrinsics_BK33.float()
        # Focal lengths and principal point relative to the image size: resolution independent.
        intr = torch.stack([k[..., 0, 0] / w, k[..., 1, 1] / h, k[..., 0, 2] / w, k[..., 1, 2] / h], dim=-1)
        extr = cam_to_ego_BK44.float()[..., :3, :].flatten(-2)
        return self.mlp(torch.cat([intr, extr], dim=-1))  # (B, K, D)


# ----------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class ModelConfig:
    """Sizes of the transformer and the condition embeddings (``configs/model/*.yaml``)."""

    num_attention_heads: int = 2
    """Heads of the Wan transformer (Wan 2.1 1.3B: 12)."""
    attention_head_dim: int = 12
    """Per-head width (Wan 2.1 1.3B: 128)."""
    num_layers: int = 2
    """Transformer blocks (Wan 2.1 1.3B: 30)."""
    ffn_dim: int = 32
    """Feed-forward width (Wan 2.1 1.3B: 8960)."""
    text_dim: int = 32
    """Width of the cross-attention context (Wan: 4096, umT5 embeddings)."""
    vace_layers: list[int] = field(default_factory=lambda: [0])
    """Blocks that receive a control hint (must include 0)."""
    latent_channels: int = 16
    """VAE latent channels (Wan 2.1 VAE: 16)."""
    patch_size: list[int] = field(default_factory=lambda: [1, 2, 2])
    """Latent patch per token (t, h, w) (Wan: 1 2 2). With a VAE of 4x spatial compression (the
    sample VAE) 1 4 4 gives the same tokens per pixel as Wan's 8x VAE with 1 2 2."""
    layout_channels: int = 19
    """Semantic layout channels pooled into the control branch: conditions.LAYOUT_CHANNELS less
    the instance ids (arbitrary labels, meaningless once averaged)."""
    num_box_classes: int = 10
    """Box classes (conditions.BOX_CLASSES)."""
    num_box_params: int = 10
    """Box parameters per token (conditions.BOX_PARAM_NAMES)."""
    max_cameras: int = 8
    """Largest camera count the camera-index embedding supports."""
    max_latent_frames: int = 64
    """Largest latent frame count the box-token frame embedding supports."""
    num_text_tokens: int = 1
    """Learned null tokens used in place of text when no text embeddings are given."""
    control_input: bool = False
    """Also feed the control (``control_hidden_states``: control-video latents + pooled layout) to
    the main stream at full strength: a second patch embedding of it is added to the noisy latents'
    own (``ControlPatchEmbedding``, as Wan I2V concatenates its image channels), without touching
    the pretrained ``patch_embedding`` weights. The VACE branch alone adds its hint after a block,
    through a residual a tiny model learns to use only slowly; the tiny default turns this on."""
    control_skip: bool = False
    """x0 parameterisation around the control: the transformer predicts the clean latents as the
    control video's latents (the first ``latent_channels`` control channels) plus its output, and
    ``forward`` returns the matching velocity ``(x_t - x0) / sigma``, so the objective and the
    sampler are unchanged. From the first step the generated latents sit where the layout puts
    things; the transformer learns what the control video does not show (appearance, texture,
    what lies outside the layout). A residual over the condition, as image-to-image models and
    the heads of chopgrad_core use; sensible when the VAE encodes the control video and the frames
    into one latent space (always here: ``conditioning.prepare`` encodes both with the same VAE)."""
    vae: Optional[str] = None
    """The VAE when ``pretrained`` is null: ``sample`` (the tiny VAE fitted to the sample world's
    train frames, shipped with drivegen: the tiny default's, see ``drivegen.model.vae.SAMPLE_VAE``),
    a local diffusers AutoencoderKLWan folder (e.g. one fitted to a store's training frames by
    ``python -m drivegen.model.fit_vae``), or null (a randomly initialised tiny VAE, whose decoder
    then draws the mean picture whatever the latents unless ``train_decoder`` trains it)."""
    train_decoder: bool = False
    """Fine-tune the VAE decoder through the ChopGrad pixel loss (the encoder stays frozen). For a
    random VAE only a trained decoder turns latents into pictures; a fitted one is better kept (on
    the sample world, fine-tuning the fitted decoder on 16 clips lowered the val probe mIoU)."""
    pretrained: Optional[str] = None
    """Local diffusers-format folder with ``transformer/`` (WanVACETransformer3DModel) and ``vae/``
    (AutoencoderKLWan); the sizes above are then taken from it. Never downloaded."""

    def __post_init__(self) -> None:
        if 0 not in self.vace_layers or max(self.vace_layers) >= self.num_layers:
            raise ConfigError(f"model.vace_layers={self.vace_layers} must include 0 and stay below "
                             f"model.num_layers={self.num_layers}")


class ControlPatchEmbedding(nn.Module):
    """Wan's patch embedding of the noisy latents plus a patch embedding of the control, summed.

    Input (B, C + Cc, T, h, w): the control concatenated after the latent channels. Zero-initialised
    when it wraps pretrained weights, so the model starts exactly as the pretrained one."""

    def __init__(self, base: nn.Conv3d, control_channels: int, zero_init: bool = False) -> None:
        super().__init__()
        self.base = base
        self.control = nn.Conv3d(control_channels, base.out_channels, kernel_size=base.kernel_size,
                                 stride=base.stride)
        if zero_init:
            nn.init.zeros_(self.control.weight)
            nn.init.zeros_(self.control.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.base.in_channels
        return self.base(x[:, :c]) + self.control(x[:, c:].to(self.control.weight.dtype))


class ControlledWan(nn.Module):
    """Wan VACE transformer conditioned on layout (control branch), boxes and cameras (context)."""

    def __init__(self, config: ModelConfig, transformer: WanVACETransformer3DModel | None = None) -> None:
        super().__init__()
        self.config = config
        d = transformer.config.text_dim if transformer is not None else config.text_dim
        self.transformer = transformer or WanVACETransformer3DModel(
            num_attention_heads=config.num_attention_heads, attention_head_dim=config.attention_head_dim,
            in_channels=config.latent_channels, out_channels=config.latent_channels, text_dim=d,
            ffn_dim=config.ffn_dim, num_layers=config.num_layers, vace_layers=list(config.vace_layers),
            patch_size=tuple(config.patch_size),
            vace_in_channels=config.latent_channels + config.layout_channels)
        if config.control_input:
            self.transformer.patch_embedding = ControlPatchEmbedding(
                self.transformer.patch_embedding, self.transformer.config.vace_in_channels,
                zero_init=transformer is not None)
        self.boxes = BoxEmbedding(d, config.num_box_classes, config.num_box_params, config.max_cameras,
                                  config.max_latent_frames)
        self.cameras = CameraEmbedding(d)
        self.null_text = nn.Parameter(torch.randn(config.num_text_tokens, d) * 0.02)

    def context(self, cond: dict[str, torch.Tensor], image_hw: tuple[int, int]) -> torch.Tensor:
        """Cross-attention tokens: text (or the learned null), one per camera, then box tokens."""
        b = cond["box_class"].shape[0]
        text = cond.get("text")
        if text is None:
            text = self.null_text.unsqueeze(0).expand(b, -1, -1)
        cams = self.cameras(cond["intrinsics"], cond["cam_to_ego"], image_hw)
        boxes = self.boxes(cond["box_corners"], cond["box_params"], cond["box_class"], cond["box_mask"])
        return torch.cat([text.float(), cams, boxes], dim=1)  # (B, L, D)

    def forward(self, latents_BKCThw: torch.Tensor, timestep_B: torch.Tensor, control_BKCThw: torch.Tensor,
                cond: dict[str, torch.Tensor], image_hw: tuple[int, int]) -> torch.Tensor:
        """Flow-matching velocity for the noisy latents of all cameras, (B, K, C, T, h, w)."""
        k = latents_BKCThw.shape[1]
        if k > self.config.max_cameras:
            raise ConfigError(f"{k} cameras exceed model.max_cameras={self.config.max_cameras}")
        dtype = next(self.transformer.parameters()).dtype
        hidden = latents_BKCThw
        if self.config.control_input:  # the control, channel-concatenated: see ControlPatchEmbedding
            hidden = torch.cat([latents_BKCThw, control_BKCThw.to(latents_BKCThw)], dim=2)
        out = self.transformer(
            hidden_states=tile_cameras(hidden).to(dtype),
            timestep=timestep_B,
            encoder_hidden_states=self.context(cond, image_hw).to(dtype),
            control_hidden_states=tile_cameras(control_BKCThw).to(dtype),
            return_dict=False,
        )[0]
        out = untile_cameras(out, k)
        if self.config.control_skip:  # out is x0 - control latents; velocity = (x_t - x0) / sigma
            # sigma floor: the velocity of an x0 prediction diverges as sigma -> 0 (the sampler
            # never evaluates sigma < 1 / steps; training's logit-normal sigma rarely goes below)
            sigma = (timestep_B.float() / 1000.0).clamp_min(0.05).view(-1, 1, 1, 1, 1, 1)
            x0 = control_BKCThw[:, :, :latents_BKCThw.shape[2]].to(out) + out
            out = (latents_BKCThw.to(out) - x0) / sigma.to(out)
        return out


def null_conditions(control_BKCthw: torch.Tensor, cond: dict) -> tuple[torch.Tensor, dict]:
    """The null condition: no layout/control (zeros, the mean latent in the normalised space) and
    no boxes (every slot empty, i.e. the learned pad token); the cameras stay, they describe the
    rig rather than the scene. Training drops to it (objective.control_dropout) so that sampling
    can guide away from it (sampler.guidance)."""
    null = dict(cond)
    null["box_mask"] = torch.zeros_like(cond["box_mask"])
    return torch.zeros_like(control_BKCthw), null


LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2"]
"""Linear layers of the Wan blocks (and VACE blocks) that carry LoRA adapters."""


def apply_lora(model: ControlledWan, rank: int) -> list[str]:
    """LoRA (peft, via diffusers' ``add_adapter``) on the transformer's attention and feed-forward
    layers; the base weights freeze, the new condition parts stay trainable: the box and camera
    embeddings, the null text tokens and the control patch embedding (its input channels are ours,
    so a pretrained VACE checkpoint has nothing to offer there). Returns the trainable names."""
    from peft import LoraConfig

    model.transformer.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=LORA_TARGETS,
                                             init_lora_weights=True))  # B = 0: starts as the base model
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name or not name.startswith("transformer.")
                         or name.startswith("transformer.vace_patch_embedding.")
                         or name.startswith("transformer.patch_embedding.control."))
    return [n for n, p in model.named_parameters() if p.requires_grad]


def pool_layout(layout_BKFCHW: torch.Tensor, latent_frames: int, latent_hw: tuple[int, int]) -> torch.Tensor:
    """Semantic layout (B, K, F, C, H, W) in [0, 1] -> the latent grid (B, K, C, T, h, w).

    Latent frame 0 covers pixel frame 0, latent frame t >= 1 covers frames 4t-3..4t (Wan's
    temporal compression); each is the mean over its frames and over each latent pixel's area.
    """
    b, k, f, c, h, w = layout_BKFCHW.shape
    x = layout_BKFCHW.float()
    first, rest = x[:, :, :1], x[:, :, 1:]
    if rest.shape[2]:
        rest = rest.reshape(b, k, latent_frames - 1, 4, c, h, w).mean(dim=3)
    x = torch.cat([first, rest], dim=2).flatten(0, 2)  # (B*K*T, C, H, W)
    x = F.adaptive_avg_pool2d(x, latent_hw)
    return x.reshape(b, k, latent_frames, c, *latent_hw).permute(0, 1, 3, 2, 4, 5)
