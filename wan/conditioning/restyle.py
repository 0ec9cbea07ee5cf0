"""Video-to-video restyle (Krea Realtime's server: ``input_video`` with ``strength``; its webcam mode per block).

The input video's latent frames are noised to the first step of a shortened schedule and denoised from there
with the family's loop. Krea's rule (``v2v.py`` ``get_denoising_schedule``, ``release_server.py``
``GenerationSession``): the steps are ``linspace(1000·strength, 0, num_steps)`` as integers, warped onto the
shifted grid like every Krea list, and a block starts from ``latent·(1 - t0/1000) + noise·t0/1000`` with ``t0`` the
first (warped) step — the loop's "first step below 1000" start, with ``σ0 = t0/1000``. Strength 1 is text-to-video.

``Restyle.source`` is the input's latent frames in the model's space: a whole tensor, or a reader with
``read(start, n)`` (``wan/video/source.py`` ``LatentFrames``: a video file or IMAGE batch encoded block by block
through a streaming Wan VAE encoder, so the input never sits in memory whole).
"""

from __future__ import annotations

import dataclasses

import torch


def restyle_steps(strength: float, num_steps: int = 5) -> list:
    """Krea's step list for ``strength`` (0 < strength <= 1): ``linspace(1000·strength, 0, num_steps)`` truncated
    to integers (to be warped onto the shifted grid, ``warp=True``)."""
    s = float(strength)
    if not 0.0 < s <= 1.0 or int(num_steps) < 2:
        raise ValueError(f"restyle strength {strength} must be in (0, 1] (1 = ignore the input video, as text-to-video)"
                         f" and num_steps {num_steps} >= 2 (Krea: 5, the last at t = 0).")
    return [int(t) for t in torch.linspace(s * 1000, 0, int(num_steps), dtype=torch.float32).to(torch.long)]


@dataclasses.dataclass
class Restyle:
    source: object

    def block(self, start: int, n: int) -> torch.Tensor:
        if torch.is_tensor(self.source):
            out = self.source[:, :, start:start + n]
        else:
            out = self.source.read(start, n)
        if out is None or out.shape[2] != n:
            got = 0 if out is None else out.shape[2]
            raise ValueError(f"the input video ended: {got} of {n} latent frames at latent frame {start}; give an input "
                             f"video at least as long as the video you generate (1 + 4 frames per latent frame).")
        return out.float()

    def check(self, latent_shape) -> None:
        b, c, frames, h, w = latent_shape
        if torch.is_tensor(self.source):
            t = self.source
            if t.dim() != 5 or t.shape[1] != c or tuple(t.shape[3:]) != (h, w) or t.shape[0] not in (1, b):
                raise ValueError(f"input video latent has shape {list(t.shape)}; expected [{b}, {c}, frames, {h}, {w}]"
                                 f" (same width and height as the video).")
            if t.shape[2] < frames:
                raise ValueError(f"the input video covers {t.shape[2]} latent frames but the video has {frames}: "
                                 f"shorten the video or give a longer input.")
        elif not hasattr(self.source, "read"):
            raise TypeError(f"restyle source is a {type(self.source).__name__}; give a latent tensor or a reader with "
                            f"read(start, n).")
