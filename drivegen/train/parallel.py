"""Training on several processes: a device mesh, then one ``apply_*`` per technique, in this order.

The model (``drivegen.model.controlled_wan``) stays single-device and readable; everything that
makes it multi-process is here, applied to a built model (torchtitan's ``parallelize.py`` pattern).

Mesh. ``world = dp x cp`` ranks, named ``("dp", "ring", "ulysses")`` with ring = 1 (the names
diffusers' attention dispatch expects; ``ulysses`` is our context-parallel dimension, ``cp`` for
short). ``trainer.context_parallel`` sets cp; the rest of the world is data parallel.

1. ``apply_context_parallel`` (cp > 1): the token sequence of one clip (latent frames x h x
   K*w, cameras tiled along width) is split into cp equal contiguous parts after the patch
   embedding; every per-token layer (norms, projections, FFN, VACE hints, cross-attention with
   the replicated context) runs on the local part only. Self-attention needs every token: it
   runs as Ulysses attention (an all_to_all turns "S/cp tokens x all heads" into "all tokens x
   heads/cp", attention, and back), which needs ``num_attention_heads % cp == 0``. The output
   projection's tokens are gathered before Wan's unpatchify.

   Why this split of work between diffusers and us. diffusers 0.42.1 ships context parallelism
   (``ContextParallelConfig``, ``ModelMixin.enable_parallelism``, the model's ``_cp_plan``), and
   its Ulysses attention (``TemplatedUlyssesAttention`` inside ``dispatch_attention_fn``, native
   SDPA backend) has a backward pass and runs on gloo: we use it, by giving each self-attention
   processor the ``ParallelConfig`` (what ``enable_parallelism`` does). We do not use
   ``enable_parallelism`` itself, for three reasons: (a) ``WanVACETransformer3DModel`` has no
   ``_cp_plan`` (only ``WanTransformer3DModel`` has); (b) its output gather
   (``hooks.context_parallel.AllGatherFunction``) back-propagates by slicing, which is right only
   when every rank computes the same loss (inference, or a replicated loss); camera-parallel
   ChopGrad gives every rank a different loss (its own cameras), so the gather's backward must
   sum the gradients of all ranks (a reduce-scatter), which ``_GatherTokens`` does; (c) it is
   marked experimental. The split/gather points below are the same as diffusers' Wan plan
   (``rope`` outputs, the first block's input, ``proj_out``), plus the VACE branch's first block.
   Ring attention (K/V passed around) is not used: Ulysses moves less data for our head counts
   (12 / 40 heads) on one NVLink host.

2. Camera-parallel ChopGrad (``camera_share``, ``prepare_camera_parallel``): with cp > 1, each
   rank VAE-encodes, decodes and back-propagates the pixel loss of its share of the cameras
   (``objective.losses(cameras=...)``), so the decoder's cost divides by cp. The flow loss is split
   the same way. Each rank's loss is its share of the clip's loss; the shares add up to it.

3. ``apply_fsdp`` (world > 1): FSDP2 ``fully_shard`` per transformer block (main and VACE), then
   the root (embeddings, condition embeddings, output head). On CUDA with
   ``trainer.mixed_precision=bf16``: bf16 parameters for compute, fp32 gradient reduction, fp32
   sharded master weights and AdamW state. FSDP shards over the whole world (dp x cp) and averages
   gradients over it; each rank back-propagates ``cp x`` its loss share, so the average equals the
   gradient of the mean loss over the global batch. Activation checkpointing is diffusers' own
   (``trainer.gradient_checkpointing``), applied before FSDP (torchtitan's order).

4. The VAE (decoder trained by the pixel loss on the tiny default) is replicated, not sharded:
   ``chopgrad_core`` drives the decoder's blocks directly, outside ``forward``, where FSDP's
   gather hooks would not run. ``reduce_replicated_grads`` averages its gradients over the world.

Data parallel: ``data.batch_size`` is the global batch; rank (dp, cp) loads rows
``dp * B/dp .. (dp + 1) * B/dp`` of each global batch (all cp ranks of a dp group the same rows).

Shape legend: B batch, K cameras, C channels, T latent frames, h w latent size, S tokens, D width.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from drivegen.errors import TrainConfigError

__all__ = ["Parallel", "apply_context_parallel", "apply_fsdp", "clip_grad_norm", "init_parallel",
           "prepare_camera_parallel", "reduce_replicated_grads"]


# ----------------------------------------------------------------------------------------------
# The mesh
# ----------------------------------------------------------------------------------------------


@dataclass
class Parallel:
    """This process's place in the mesh."""

    mesh: object  # DeviceMesh ("dp", "ring", "ulysses")
    fsdp_mesh: object  # DeviceMesh over the whole world (FSDP shards and averages over it)
    rank: int
    world: int
    dp: int
    cp: int
    dp_rank: int
    cp_rank: int
    device: torch.device

    @property
    def cp_group(self):
        return self.mesh["ulysses"].get_group()

    def rows(self, batch_size: int) -> slice:
        """This rank's rows of a global batch."""
        per = batch_size // self.dp
        return slice(self.dp_rank * per, (self.dp_rank + 1) * per)

    def camera_share(self, num_cameras: int) -> slice:
        """This rank's contiguous share of the cameras (camera-parallel ChopGrad); equal shares."""
        per = num_cameras // self.cp
        return slice(self.cp_rank * per, (self.cp_rank + 1) * per)

    def all_sum(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().clone()
        dist.all_reduce(x)
        return x

    def broadcast_object(self, obj):
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        dist.barrier()


def launched() -> bool:
    """True under torchrun (WORLD_SIZE > 1) or inside a Ray Train worker (process group up)."""
    return (dist.is_available() and dist.is_initialized()) or int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_parallel(context_parallel: int, device: torch.device) -> Parallel:
    """Join (or start, under torchrun) the process group and build the mesh."""
    from torch.distributed.device_mesh import init_device_mesh

    if not dist.is_initialized():
        # nccl for CUDA tensors, gloo for CPU ones (the CPU tests; gloo has all_to_all and reduce-scatter)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", device_id=device
                                if device.type == "cuda" else None)
    world, rank = dist.get_world_size(), dist.get_rank()
    cp = context_parallel
    if world % cp:
        raise TrainConfigError(f"trainer.context_parallel={cp} does not divide the world size {world}; choose a "
                               "divisor (the other factor is data parallel)")
    mesh = init_device_mesh(device.type, (world // cp, 1, cp), mesh_dim_names=("dp", "ring", "ulysses"))
    fsdp_mesh = init_device_mesh(device.type, (world,), mesh_dim_names=("fsdp",))
    return Parallel(mesh=mesh, fsdp_mesh=fsdp_mesh, rank=rank, world=world, dp=world // cp, cp=cp,
                    dp_rank=mesh["dp"].get_local_rank(), cp_rank=mesh["ulysses"].get_local_rank(), device=device)


# ----------------------------------------------------------------------------------------------
# 1. Context parallelism over the token sequence
# ----------------------------------------------------------------------------------------------


def _local_tokens(x_BSD: torch.Tensor, par: Parallel) -> torch.Tensor:
    """This rank's contiguous part of the token axis (dim 1); differentiable (a slice)."""
    s = x_BSD.shape[1]
    if s % par.cp:
        raise TrainConfigError(f"{s} tokens per clip do not split into trainer.context_parallel={par.cp} equal parts; "
                               "choose data.image_size / data.clip_length so that latent frames x (H/16) x "
                               "(cameras x W/16) is a multiple of it")
    return x_BSD.chunk(par.cp, dim=1)[par.cp_rank]


class _GatherTokens(torch.autograd.Function):
    """All-gather of the token axis; backward: reduce-scatter (sum). Every rank's loss may touch
    every rank's tokens (camera-parallel ChopGrad: different cameras, hence different losses, per
    rank), so a token's gradient is the sum over ranks, not this rank's slice alone."""

    @staticmethod
    def forward(ctx, x_BSD: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        n = dist.get_world_size(group)
        parts = [torch.empty_like(x_BSD) for _ in range(n)]
        dist.all_gather(parts, x_BSD.contiguous(), group=group)
        return torch.cat(parts, dim=1)

    @staticmethod
    def backward(ctx, grad_BSD: torch.Tensor):
        n = dist.get_world_size(ctx.group)
        full_SBD = grad_BSD.transpose(0, 1).contiguous()  # reduce_scatter_tensor splits dim 0
        out_SBD = full_SBD.new_empty((full_SBD.shape[0] // n, *full_SBD.shape[1:]))
        dist.reduce_scatter_tensor(out_SBD, full_SBD, group=ctx.group)
        return out_SBD.transpose(0, 1), None


def apply_context_parallel(transformer: nn.Module, par: Parallel) -> None:
    """Split the sequence after the patch embedding, Ulysses self-attention, gather before unpatchify."""
    from diffusers.models._modeling_parallel import ContextParallelConfig, ParallelConfig

    heads = transformer.config.num_attention_heads
    if heads % par.cp:
        raise TrainConfigError(f"Ulysses attention splits the {heads} heads over trainer.context_parallel={par.cp} "
                               "ranks: choose a divisor of the head count")
    # 1a. Self-attention: diffusers' Ulysses (see the module docstring). WanAttnProcessor hands the
    # config to dispatch_attention_fn for self-attention only; cross-attention stays local.
    cpc = ContextParallelConfig(ulysses_degree=par.cp)
    cpc.setup(par.rank, par.world, par.device, par.mesh["ring", "ulysses"])
    config = ParallelConfig(context_parallel_config=cpc)
    for block in [*transformer.blocks, *transformer.vace_blocks]:
        block.attn1.processor._parallel_config = config

    # 1b. Where the sequence is split and gathered (diffusers' Wan plan, plus the VACE branch).
    def split_rope(module, args, out):  # (cos, sin), each (1, S, 1, d)
        return tuple(_local_tokens(f, par) for f in out)

    def split_vace_input(module, args):  # (hidden, context, control, timestep_proj, rope)
        return (_local_tokens(args[0], par), args[1], _local_tokens(args[2], par), *args[3:])

    def split_block_input(module, args):  # (hidden, context, timestep_proj, rope)
        return (_local_tokens(args[0], par), *args[1:])

    def gather_output(module, args, out):  # (B, S/cp, D_out) -> (B, S, D_out)
        return _GatherTokens.apply(out, par.cp_group)

    transformer.rope.register_forward_hook(split_rope)
    transformer.vace_blocks[0].register_forward_pre_hook(split_vace_input)
    transformer.blocks[0].register_forward_pre_hook(split_block_input)
    transformer.proj_out.register_forward_hook(gather_output)


@torch.no_grad()
def _gather_cameras(x: torch.Tensor, par: Parallel) -> torch.Tensor:
    """Camera shares (dim 1) of all cp ranks, concatenated in rank order."""
    if x.dtype == torch.bool:  # masks travel as bytes (not every backend reduces or gathers bool)
        return _gather_cameras(x.to(torch.uint8), par).bool()
    parts = [torch.empty_like(x) for _ in range(par.cp)]
    dist.all_gather(parts, x.contiguous(), group=par.cp_group)
    return torch.cat(parts, dim=1)


@torch.no_grad()
def prepare_camera_parallel(batch: dict, vae, space, par: Parallel) -> tuple:
    """``conditioning.prepare`` with the VAE encoding split over the cp ranks by camera: each rank
    encodes its cameras, the latents and conditions are gathered (the transformer sees every
    camera); the ground-truth frames stay local (this rank's pixel loss needs only its own)."""
    from drivegen.model.conditioning import prepare

    share = par.camera_share(batch["images"].shape[2])
    own = {k: (v[:, :, share] if k in _CAMERA_AXIS_2 else v) for k, v in batch.items()}
    x0, frames, control, cond = prepare(own, vae, space, par.device)
    cond = {k: _gather_cameras(v, par) for k, v in cond.items()}  # every entry (B, K, ...)
    return _gather_cameras(x0, par), frames, _gather_cameras(control, par), cond, share


_CAMERA_AXIS_2 = {"images", "control", "layout", "box_corners", "box_params", "box_class", "box_mask",
                  "intrinsics", "cam_to_ego"}
"""ClipDataset batch keys with cameras on axis 2: (B, T, K, ...)."""


# ----------------------------------------------------------------------------------------------
# 3. FSDP2
# ----------------------------------------------------------------------------------------------


def apply_fsdp(model: nn.Module, par: Parallel, bf16: bool) -> None:
    """fully_shard each transformer block, then the root; bf16 compute with fp32 reduction."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    # Inputs are not cast: the timestep (1000 sigma) and RoPE's angles would lose precision in bf16;
    # the trainer's bf16 autocast runs the matmuls in bf16 as on one GPU.
    mp = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32, cast_forward_inputs=False)
          if bf16 else MixedPrecisionPolicy())
    transformer = model.transformer
    for block in [*transformer.vace_blocks, *transformer.blocks]:
        fully_shard(block, mesh=par.fsdp_mesh, mp_policy=mp)
    # The root keeps its (small) parameters gathered after forward: they are used again at once.
    fully_shard(model, mesh=par.fsdp_mesh, mp_policy=mp, reshard_after_forward=False)


# ----------------------------------------------------------------------------------------------
# 4. Replicated parameters, gradient clipping
# ----------------------------------------------------------------------------------------------


def reduce_replicated_grads(params: list[torch.Tensor], par: Parallel) -> None:
    """Average the gradients of replicated (unsharded) parameters over the world, as FSDP does
    for the sharded ones; one flat buffer, one all-reduce."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= par.world
    offset = 0
    for g in grads:
        g.copy_(flat[offset: offset + g.numel()].view_as(g))
        offset += g.numel()


def clip_grad_norm(sharded: list[torch.Tensor], replicated: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Clip all gradients by their joint norm: the sharded ones' norm is a DTensor reduction over
    the mesh, the replicated ones' is the same on every rank."""
    from torch.distributed.tensor import DTensor

    norms = []
    for group in (sharded, replicated):
        grads = [p.grad for p in group if p.grad is not None]
        if grads:
            n = torch.nn.utils.get_total_norm(grads)
            norms.append(n.full_tensor() if isinstance(n, DTensor) else n)
    total = torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.zeros(())
    # A Python float scales DTensor and plain gradients alike (a 0-d plain tensor would not mix
    # with DTensors); the one host sync per step is already paid by the loss logging.
    coef = min(1.0, max_norm / (float(total) + 1e-6))
    if coef < 1.0:
        for p in [*sharded, *replicated]:
            if p.grad is not None:
                p.grad.mul_(coef)
    return total
