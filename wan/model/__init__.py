"""The Wan DiT: its config read from the weights (``config``), the forward maths over Wan's module tree (``dit``),
the loadable causal model (``causal``), RoPE, CLIP-feature checks, checkpoint layouts and LoRA merging."""
