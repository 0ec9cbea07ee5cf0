"""Our own torch towers for the CLIP families beyond OpenAI/OpenCLIP, written from the families' definitions.

Each module holds ONE tower: its config, the module (``export=True``: the plain-op graph — static shapes, only ops
on the AX650 list; eager: the same maths with PyTorch SDPA), and the converters from the checkpoint layouts
users have to our canonical names.
transformers / open_clip / timm are test oracles only; nothing here imports them.

* ``bert``  — Chinese-CLIP's text tower (BERT, [CLS] pooling), HF ``ChineseCLIPModel`` and OFA-Sys ``cn_clip``
* ``eva``   — Jina-CLIP v2's vision tower (EVA02: 2D RoPE, SwiGLU, sub-LN), Jina remote-code layout
* ``xlmr``  — Jina-CLIP v2's text tower (Jina-XLM-RoBERTa: rotary, post-LN, LoRA merged at load, mean pooling)
* ``ops``   — the pieces they share (pad mask, rotary as a constant MatMul, masked mean, gather by ids)
"""
