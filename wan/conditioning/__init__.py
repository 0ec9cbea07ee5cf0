"""Image conditioning: ComfyUI's i2v tensors and their image routes (``image``), and the one mapping from a
conditioning to the sampler's inputs (``inputs``)."""
