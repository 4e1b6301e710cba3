"""drivegen: controllable multi-camera driving video.

Layers, each importing only the ones before it: ``drivegen.data`` (logs -> clip store),
``drivegen.model`` (the controlled Wan model, objective, sampler, checkpoints), and the stages
``drivegen.preprocess``, ``drivegen.train``, ``drivegen.generate``, which never import each other.
Shared by all: ``drivegen.workpool`` (Ray), ``drivegen.config`` (Hydra structured configs),
``drivegen.errors``.
"""
