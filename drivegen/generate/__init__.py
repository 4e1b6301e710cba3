"""Generation: the flow-matching sampler and video writing (scenario pipelines land with the generation issue)."""
