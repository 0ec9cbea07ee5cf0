"""Tiny random Wan models shared by the loop-shape tests."""

from comfyui_clipwan.wan import CausalWanModel


def sharpened(config, seed: int) -> CausalWanModel:
    """A random model of ``config`` whose self-attention is sharpened (q/k norm gains x4), so which frames a
    loop lets a block attend, and at which positions, shows in the output instead of averaging out."""
    sd = CausalWanModel.random(config, seed=seed).state_dict()
    for k in sd:
        if ".self_attn.norm_q." in k or ".self_attn.norm_k." in k:
            sd[k] = sd[k] * 4.0
    return CausalWanModel.from_state_dict(sd)
