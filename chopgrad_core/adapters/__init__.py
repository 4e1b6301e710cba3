"""VAE adapters, one file per family, and :func:`wrap` which picks one.

Adding a family: write ``adapters/<family>.py`` with a :class:`~chopgrad_core.decoder.CausalDecoder`
subclass and add it to ``_ADAPTERS``; the conformance tests in ``tests/chopgrad_core`` then apply.
"""

from __future__ import annotations

from torch import nn

from chopgrad_core.adapters.cogvideox import CogVideoXDecoder
from chopgrad_core.adapters.wan import WanDecoder
from chopgrad_core.decoder import CausalDecoder
from chopgrad_core.errors import UnsupportedVAEError

# VAE class name -> adapter. Matched by name so that a subclass of a supported VAE also works and
# importing this module never needs more of diffusers than the two adapters already import.
_ADAPTERS: dict[str, type[CausalDecoder]] = {
    "AutoencoderKLWan": WanDecoder,
    "AutoencoderKLCogVideoX": CogVideoXDecoder,
}


def wrap(vae: nn.Module, *, clamp: bool | None = None) -> CausalDecoder:
    """The causal decoder of ``vae``, for :func:`chopgrad_core.decode` and :func:`chopgrad_core.pixel_loss`.

    ``clamp`` overrides the family's default (Wan clamps to [-1, 1] like ``vae.decode``; CogVideoX
    does not).
    """
    if isinstance(vae, CausalDecoder):
        return vae
    for cls in type(vae).__mro__:
        adapter = _ADAPTERS.get(cls.__name__)
        if adapter is not None:
            return adapter(vae) if clamp is None else adapter(vae, clamp=clamp)
    raise UnsupportedVAEError(
        f"chopgrad_core.wrap has no adapter for {type(vae).__name__}; supported VAEs: "
        f"{', '.join(sorted(_ADAPTERS))} (diffusers). Add one in chopgrad_core/adapters/."
    )


__all__ = ["wrap", "WanDecoder", "CogVideoXDecoder"]
