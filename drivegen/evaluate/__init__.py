"""The evaluation stage: does the generator follow its controls, and how close are its frames to real ones?

``python -m drivegen.evaluate`` (configs/evaluate.yaml) generates every clip of a held-out split
from its own conditions and scores it two ways:

- Controllability, as MagicDrive, Panacea and others measure it: a perception model trained on
  real frames reads the generated ones. Here it is the layout probe (``drivegen.model.probe``), a
  small segmentation network trained on the real frames of the train split to predict each
  pixel's layout class (map layers and agent classes). Scores: mIoU against the clip's layout and
  box recall (the share of visible labelled boxes the probe labels right on at least half of their
  footprint). The probe's scores on the real val frames are the ceiling.
- Fidelity against the real frames of the same conditions: PSNR, SSIM, LPIPS (local weights),
  temporal flicker (``chopgrad_core.heads.metrics``), FID per frame and FVD per clip from feature
  networks in local TorchScript files (``drivegen.evaluate.features``; not computed without them).

Three baselines frame every number: the ground truth (the ceiling), generation from another clip's
conditions with the same noise (what ignoring the controls scores) and the per-pixel mean frame
of the train split (what knowing only the average street scores).

What this measures, and what it does not: the probe reads classes per pixel, so it rewards the
right things in the right places, not realism; a generator could paint control-image colours and
score well (the sample world's real frames ARE such renders, so there that is the goal). On the
sample store the val split is small (one held-out log): differences of a few points are noise.

Modules: ``config`` (EvaluateConfig), ``clip`` (one clip's evaluation), ``run`` (plan, Ray actors
through drivegen.workpool, aggregation), ``report`` (metrics.json, report.md, charts, summary),
``features`` (FID / FVD), ``probe`` (``python -m drivegen.evaluate.probe``: train the probe).
"""
