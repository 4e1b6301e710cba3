"""The model layer, below the stages that train it and sample from it.

- ``controlled_wan``: ``ControlledWan`` (diffusers' Wan VACE transformer plus the condition
  embeddings), ``ModelConfig``, LoRA.
- ``objective``: ``LatentSpace`` and the training losses (flow matching plus the ChopGrad pixel loss).
- ``conditioning``: a ClipDataset batch (or a rendered scene's arrays) -> the model's inputs.
- ``sampler``: flow-matching sampling with diffusers' scheduler, chunked continuation, guidance.
- ``vae``: the VAE a run uses: the tiny default (statistics fitted to the data) or a local folder.
- ``checkpoint``: writing and reading training checkpoints (versioned folders, safetensors).

Imports the data layer and ``chopgrad_core``; never a stage.
"""
