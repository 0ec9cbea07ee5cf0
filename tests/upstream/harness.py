"""Shared pieces of the upstream parity tests: the authors' noise order replayed through our noise hook, a
fixed text table for their text encoder, an identity VAE, their diffusion wrapper around a tiny model."""

import torch

from comfyui_clipwan.wan import CausalSettings, CausalWanModel, WanConfig, sample_causal
from comfyui_clipwan.wan.sampling.loop import NoiseSource

LAYERS, H, W = 2, 8, 8
TOKENS = (H // 2) * (W // 2)
# their pipelines allocate caches as [.., 12 heads, 128]: the tiny model keeps that head layout
TINY = WanConfig(dim=1536, ffn_dim=256, num_heads=12, num_layers=LAYERS, in_dim=16)


def random_state_dict(seed=1, config=TINY):
    """Random weights in Wan's layout (their own init zeroes parts of the model, whose output would then be
    the noise), self-attention sharpened (q/k norm gains x4) so attention rules show in the output."""
    sd = CausalWanModel.random(config, seed=seed).state_dict()
    for k in sd:
        if ".self_attn.norm_q." in k or ".self_attn.norm_k." in k:
            sd[k] = sd[k] * 4.0
    return sd


class ReplayTorchGlobalNoise(NoiseSource):
    """The draws of a Self-Forcing-style pipeline: initial noise given as ``[B, F, C, H, W]``; each re-noise
    is ``randn_like`` of the ``[B·n, C, H, W]`` block from the global CPU generator, seeded once before the
    run, in block/step order (the order our loop asks in)."""

    def __init__(self, noise_bfchw, seed):
        self.noise = noise_bfchw
        self.gen = torch.Generator().manual_seed(seed)

    def initial(self, shape, device):
        return self.noise.permute(0, 2, 1, 3, 4).contiguous().to(device)

    def step(self, block, step, shape, device):
        b, c, n, h, w = shape
        draw = torch.randn((b * n, c, h, w), generator=self.gen)
        return draw.view(b, n, c, h, w).permute(0, 2, 1, 3, 4).to(device)


class Texts(torch.nn.Module):
    """Prompt string -> fixed random umt5-sized states (the text encoder is not under test)."""

    def forward(self, text_prompts):
        seed = sum(map(ord, text_prompts[0]))
        return {"prompt_embeds": torch.randn(1, 512, 4096, generator=torch.Generator().manual_seed(seed)) * 0.3}


class IdentityVAE:
    def decode_to_pixel(self, latent, use_cache=False):
        return latent



def their_wrapper(model, shift=5.0):
    """Their ``WanDiffusionWrapper`` around ``model`` (its ``__init__`` loads wan_models/ from disk)."""
    from utils.scheduler import FlowMatchScheduler
    from utils.wan_wrapper import WanDiffusionWrapper

    wrapper = WanDiffusionWrapper.__new__(WanDiffusionWrapper)
    torch.nn.Module.__init__(wrapper)
    wrapper.model = model
    wrapper.uniform_timestep = False
    wrapper.scheduler = FlowMatchScheduler(shift=shift, sigma_min=0.0, extra_one_step=True)
    wrapper.scheduler.set_timesteps(1000, training=True)
    wrapper.seq_len = 32760
    wrapper.post_init()
    return wrapper


def fit_pipeline(pipe):
    """Their pipelines hard-code 30 blocks and 1560 tokens per frame (Wan 1.3B at 480x832): the tiny values."""
    pipe.num_transformer_blocks = LAYERS
    pipe.frame_seq_length = TOKENS
    return pipe


def causal_inference_parity(cfg: dict, settings: CausalSettings, generated: int, image: bool, label: str) -> None:
    """The authors' ``CausalInferencePipeline`` (Self-Forcing's, also shipped by Causal Forcing; imported from the
    tree on sys.path) configured by ``cfg`` vs ``sample_causal`` with ``settings``: same tiny random weights,
    their noise replayed through our hook, the image latent (``image``) as frame 0. Asserts ≤ 1e-4 fp32."""
    from omegaconf import OmegaConf
    from pipeline.causal_inference import CausalInferencePipeline
    from wan.modules.causal_model import CausalWanModel as TheirModel

    model = TheirModel(model_type="t2v", dim=1536, ffn_dim=256, num_heads=12, num_layers=2).eval()
    sd = random_state_dict()
    model.load_state_dict(sd, strict=True)
    pipe = fit_pipeline(CausalInferencePipeline(OmegaConf.create(cfg), torch.device("cpu"),
                                                generator=their_wrapper(model), text_encoder=Texts(),
                                                vae=IdentityVAE()))
    noise = torch.randn(1, generated, 16, H, W, generator=torch.Generator().manual_seed(7))
    start = torch.randn(1, 1, 16, H, W, generator=torch.Generator().manual_seed(8)) if image else None
    torch.manual_seed(42)
    with torch.no_grad():
        _, theirs = pipe.inference(noise, text_prompts=["a prompt"], initial_latent=start, return_latents=True)
    theirs = theirs.permute(0, 2, 1, 3, 4)

    frames = generated + (1 if image else 0)
    full_noise = torch.cat([torch.zeros(1, 1, 16, H, W), noise], 1) if image else noise  # frame 0 is the image
    ours = sample_causal(CausalWanModel.from_state_dict(sd), torch.zeros(1, 16, frames, H, W),
                         Texts()(["a prompt"])["prompt_embeds"], settings=settings,
                         first_frames=None if start is None else start.permute(0, 2, 1, 3, 4),
                         noise=ReplayTorchGlobalNoise(full_noise, 42))
    diff = (ours - theirs).abs().max().item()
    print(f"\n{label}: max |ours - theirs| = {diff:.2e} (output scale {theirs.abs().max().item():.2f})")
    assert theirs.abs().mean() > 0.1
    assert diff <= 1e-4
