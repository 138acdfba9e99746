"""Sampling from a policy: the KV-cache sampler, logit filters, stop ids, prompt rendering,
soft prompts and loading a policy from a run or a Hugging Face directory."""
