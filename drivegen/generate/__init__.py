"""The generation stage: ``python -m drivegen.generate`` (configs/generate.yaml).

``scenario`` (edits of a store clip's scene, validated), ``pipeline`` (``Generator``: one scenario
-> videos, nuScenes labels and a manifest, in numbered steps), ``batch`` (many scenarios, locally
or on the shared Ray work pool). Sampling and checkpoints come from ``drivegen.model``.
"""
