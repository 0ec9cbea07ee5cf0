"""Dtype names users type (node widgets, CLI flags) → torch dtypes: the one table both cores read."""

import torch

DTYPE_BY_NAME = {
    "fp32": torch.float32, "float32": torch.float32,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
}
