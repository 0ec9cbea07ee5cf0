"""Wan nodes in plain Python: conditioning like core WanImageToVideo, our loader, the sampler on our model
and on a ComfyUI-shaped MODEL (weights adopted without copying), progress/previews/UI events, interrupts."""

import base64
import io

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from comfyui_clipwan.nodes import comfy_bridge as bridge
from comfyui_clipwan.nodes import wan_nodes
from comfyui_clipwan.nodes.wan_nodes import CausalWanSampler, LoadCausalWanModel, WanI2VConditioning
from comfyui_clipwan.wan import CausalSettings, CausalWanModel, WanConfig, denormalize, normalize, sample_causal

I2V = WanConfig(dim=256, ffn_dim=320, num_heads=2, num_layers=2, in_dim=36, has_img_emb=True)
T2V = WanConfig(dim=256, ffn_dim=320, num_heads=2, num_layers=2, in_dim=16)


class FakeVAE:
    """Stands in for ComfyUI's Wan VAE: [F,H,W,3] pixels -> [1,16,(F-1)//4+1,H/8,W/8] (deterministic)."""

    def encode(self, pixels):
        x = pixels.movedim(-1, 0)[:, ::4]  # [3, T, H, W]
        x = F.avg_pool3d(x.unsqueeze(0), (1, 8, 8))[0]
        return torch.cat([x * (i + 1) for i in range(6)], 0)[:16].unsqueeze(0) - 0.3


def wan_y(image_latent_raw, concat_mask):
    """Wan i2v's ``y`` written out here, independently of the pack: 4 copies of the known-frame mask (Wan: 1 =
    known; ComfyUI's concat_mask: 0 = known) followed by the normalised image latent."""
    b, _, frames, h, w = image_latent_raw.shape
    known = (1.0 - concat_mask.float()).expand(b, 4, frames, h, w)
    return torch.cat([known, normalize(image_latent_raw.float())], dim=1)


class ClipOut:
    def __init__(self, feats):
        self.penultimate_hidden_states = feats


def _conditioning(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, 512, 4096, generator=g), {"pooled_output": None}]]


def _i2v_inputs(length=13, width=64, height=64):
    pos, neg = _conditioning(0), _conditioning(1)
    image = torch.rand(1, 48, 80, 3, generator=torch.Generator().manual_seed(2))
    clip = ClipOut(torch.randn(1, 257, 1280, generator=torch.Generator().manual_seed(3)))
    return WanI2VConditioning().encode(pos, neg, FakeVAE(), width, height, length, 1, clip, image), clip


def test_conditioning_matches_wan_image_to_video_semantics():
    (pos, neg, latent), clip = _i2v_inputs(length=13)
    assert latent["samples"].shape == (1, 16, 4, 8, 8) and not latent["samples"].any()
    for c in (pos, neg):
        d = c[0][1]
        assert d["clip_vision_output"] is clip and d["pooled_output"] is None
        assert d["concat_latent_image"].shape == (1, 16, 4, 8, 8)
        assert d["concat_mask"].tolist() == torch.tensor([0.0, 1, 1, 1]).view(1, 1, 4, 1, 1).expand(1, 1, 4, 8, 8).tolist()
    assert pos[0][1]["concat_latent_image"] is neg[0][1]["concat_latent_image"]  # shared, not copied
    # frames after the start image are grey 0.5 pixels before encoding
    torch.testing.assert_close(pos[0][1]["concat_latent_image"][0, 0, 1], torch.full((8, 8), 0.5 - 0.3))
    with pytest.raises(ValueError) as e:
        WanI2VConditioning().encode(pos, neg, None, 64, 64, 13, 1, None, torch.rand(1, 64, 64, 3))
    assert str(e.value) == "a start_image needs a VAE to encode it: connect the Wan 2.1 VAE (wan_2.1_vae)."


@pytest.fixture(scope="module")
def i2v_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("wan") / "self_forcing_i2v.pt"
    sd = CausalWanModel.random(I2V, seed=5).state_dict()
    torch.save({"generator_ema": {"model." + k: v for k, v in sd.items()}}, path)
    return str(path)


def test_sampler_on_loaded_model_equals_core_call_and_reports_progress(i2v_file, monkeypatch):
    (pos, neg, latent), clip = _i2v_inputs(length=13)
    (model,) = LoadCausalWanModel().load(i2v_file, "fp32", "auto")
    assert model.is_clipwan_causal_model and model.config == I2V
    seen = []
    real_progress = bridge.Progress
    monkeypatch.setattr(bridge, "Progress", lambda total, node_id=None: real_progress(
        total, node_id, callback=lambda v, t, img: seen.append((v, t, img and img.size))))
    (out,) = CausalWanSampler().sample(model, pos, latent, seed=4, steps="1000,500", frames_per_block=3,
                                       independent_first_frame=True, negative=neg, unique_id="7")
    assert out["samples"].shape == (1, 16, 4, 8, 8)
    # one update per denoising step (2 blocks x 2 steps), and the block's preview when it is final
    assert seen == [(1, 4, None), (2, 4, None), (2, 4, (32, 32)), (3, 4, None), (4, 4, None), (4, 4, (32, 32))]
    d = pos[0][1]
    y = wan_y(d["concat_latent_image"], d["concat_mask"])
    want = sample_causal(model, torch.zeros(1, 16, 4, 8, 8), pos[0][0], seed=4,
                         settings=CausalSettings(steps=[1000, 500], independent_first_frame=True),
                         clip_fea=clip.penultimate_hidden_states, concat=y)
    torch.testing.assert_close(out["samples"], denormalize(want), atol=0, rtol=0)
    # image conditioning off changes the result
    (off,) = CausalWanSampler().sample(model, pos, latent, seed=4, steps="1000,500", independent_first_frame=True,
                                       image_conditioning=False)
    assert (off["samples"] - out["samples"]).abs().max() > 1e-3


def test_t2v_model_continues_from_start_image_route3(caplog):
    (pos, neg, latent), _ = _i2v_inputs(length=13)
    m = CausalWanModel.random(T2V, seed=6)
    with caplog.at_level("WARNING", logger="comfyui_clipwan"):
        (out,) = CausalWanSampler().sample(m, pos, latent, seed=0, steps="1000", independent_first_frame=True)
    assert caplog.messages == [
        "CausalWanSampler ignores: positive: clip_vision_output (the model Wan 2.1 custom t2v (dim 256, ffn 320, "
        "2 heads, 2 layers, in_dim 16) has no image embedding; use an i2v Wan model to condition on CLIP features)"]
    torch.testing.assert_close(out["samples"][:, :, :1], pos[0][1]["concat_latent_image"][:, :, :1],
                               atol=1e-6, rtol=0)


class FakeCond:
    def __init__(self, t):
        self.cond = t


class FakeBaseModel:
    """ComfyUI's BaseModel surface the sampler uses (model_base.WAN21), over a Wan-named module tree."""

    def __init__(self, tree):
        self.diffusion_model = tree
        self.calls = []

    def get_dtype_inference(self):
        return torch.float32

    def process_latent_in(self, z):
        return normalize(z)

    def process_latent_out(self, z):
        return denormalize(z)

    def extra_conds(self, noise, device, cross_attn, **kw):
        self.calls.append(sorted(kw))
        out = {"c_crossattn": FakeCond(cross_attn)}
        if "clip_vision_output" in kw:
            out["clip_fea"] = FakeCond(kw["clip_vision_output"].penultimate_hidden_states)
        if "concat_latent_image" in kw:
            out["c_concat"] = FakeCond(wan_y(kw["concat_latent_image"], kw["concat_mask"]))
        return out


class FakePatcher:
    def __init__(self, tree):
        self.model = FakeBaseModel(tree)
        self.load_device = torch.device("cpu")


def test_sampler_adopts_comfy_model_without_copying(i2v_file, monkeypatch):
    (pos, neg, latent), clip = _i2v_inputs(length=13)
    own = CausalWanModel.from_file(i2v_file)
    patcher = FakePatcher(own.tree)
    loaded = []
    monkeypatch.setattr(bridge, "load_models_gpu", lambda models: loaded.extend(models) or True)
    adopted = []
    real_adopt = CausalWanModel.adopt.__func__
    monkeypatch.setattr(CausalWanModel, "adopt", classmethod(
        lambda cls, dm, **kw: adopted.append(real_adopt(cls, dm, **kw)) or adopted[-1]))
    (a,) = CausalWanSampler().sample(patcher, pos, latent, seed=1, steps="1000,500", independent_first_frame=True)
    (b,) = CausalWanSampler().sample(own, pos, latent, seed=1, steps="1000,500", independent_first_frame=True)
    assert loaded == [patcher]  # ComfyUI model management loads it first
    assert adopted[0].tree is own.tree  # the very same modules: no weight copy
    assert adopted[0].tree.blocks[0].self_attn.q.weight.data_ptr() == own.tree.blocks[0].self_attn.q.weight.data_ptr()
    torch.testing.assert_close(a["samples"], b["samples"], atol=0, rtol=0)


def test_ui_event_stream_and_interrupt(i2v_file, monkeypatch):
    (pos, neg, latent), _ = _i2v_inputs(length=13)
    model = CausalWanModel.from_file(i2v_file)
    events = []
    monkeypatch.setattr(bridge, "prompt_server", lambda: object())
    monkeypatch.setattr(bridge, "send_ui_event", lambda ev, data, client_id=None: events.append((ev, data)) or True)
    CausalWanSampler().sample(model, pos, latent, seed=0, steps="1000", independent_first_frame=True, unique_id="12")
    assert [(e, d["node"], d["block"], d["total_blocks"], d["frame_start"], len(d["frames"])) for e, d in events] == [
        ("clipwan.causal_frames", "12", 0, 2, 0, 1), ("clipwan.causal_frames", "12", 1, 2, 1, 3)]
    img = Image.open(io.BytesIO(base64.b64decode(events[1][1]["frames"][0])))
    assert img.format == "JPEG" and img.size == (32, 32)

    class Interrupted(BaseException):
        pass

    calls = []

    def interrupt():
        calls.append(1)
        if len(calls) == 3:  # block 0: before its step and before its clean pass; then block 1's step
            raise Interrupted()

    monkeypatch.setattr(bridge, "check_interrupt", interrupt)
    events.clear()
    with pytest.raises(Interrupted):
        CausalWanSampler().sample(model, pos, latent, seed=0, steps="1000", independent_first_frame=True)
    assert len(events) == 1  # the first block finished; nothing after the interrupt


def test_sampler_rejects_non_wan_model():
    (pos, neg, latent), _ = _i2v_inputs()
    with pytest.raises(ValueError) as e:
        CausalWanSampler().sample(object(), pos, latent, seed=0)
    assert str(e.value) == ("model (object) is not a Wan 2.1 model: connect Load Diffusion Model (a Wan 2.1 file) "
                            "or Load Causal Wan Model.")
