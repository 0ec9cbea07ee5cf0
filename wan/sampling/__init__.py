"""Block-causal sampling: the one loop (``loop``: settings, noise, hooks, the block loop), its loop shapes
(``memflow``, ``rolling``, ``recompute``), ``run`` (a shape picked from the settings; ``sample_causal``), the KV
cache, the schedulers (flow-matching steps, UniPC) and the families' presets."""
