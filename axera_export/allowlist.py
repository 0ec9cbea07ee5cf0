"""Which ONNX ops Pulsar2 can put on the AX650 NPU, checked before anyone waits for a build.

Source: AXERA-TECH/pulsar2-docs-en ``source/appendix/op_support_list_ax650.md`` (the operator table and its
attribute limits). An op outside this table is not necessarily fatal — Pulsar2 may constant-fold it or
run it in a CPU subgraph — but it is exactly what makes builds fail or slow, so we report each one by op
type and node name.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
from onnx import TensorProto

AX650_OPS = frozenset("""
Abs Add And ArgMax ArgMin AveragePool BatchNormalization Cast Ceil Clip Concat Constant ConstantOfShape Conv
ConvTranspose Cos DepthToSpace Div Elu Equal Erf Exp Expand Flatten Floor Gather GatherElements GatherND Gelu Gemm
GlobalAveragePool GlobalMaxPool Greater GreaterOrEqual GridSample GroupNormalization HardSigmoid HardSwish Identity
InstanceNormalization InverseSigmoid LayerNormalization LeakyRelu Less LessOrEqual LpNormalization LSTM LogSoftmax
MatMul Max MaxPool Min Mish Mul Not Pad Pow PRelu ReduceL2 ReduceMax ReduceMean ReduceMin ReduceSum Relu Reshape
Resize RMSNormalization RoiAlign RotaryEmbedding Round ScatterElements ScatterND Sigmoid Silu Sin Slice Softmax
Softplus SpaceToDepth SpatialTransformer Split Sqrt Squeeze Sub Swish Tanh Tile TopK Transpose Unsqueeze Where Xor
""".split())

# Cast: "to: uint8/int8/uint16/int16/uint32/int32/float32" (no int64, no fp16).
CAST_TARGETS = {TensorProto.UINT8, TensorProto.INT8, TensorProto.UINT16, TensorProto.INT16, TensorProto.UINT32,
                TensorProto.INT32, TensorProto.FLOAT}


@dataclasses.dataclass(frozen=True)
class OpIssue:
    op_type: str
    node: str
    reason: str

    def __str__(self) -> str:
        return f"{self.op_type} (node '{self.node}'): {self.reason}"


def _attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def check_ax650_ops(model: onnx.ModelProto) -> list[OpIssue]:
    """Every node that is outside the AX650 NPU table or breaks one of its attribute limits."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # a > 2 GB model must be inferred from its path; ranks then come from initializers only
        inferred = model
    ranks = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        if vi.type.tensor_type.HasField("shape"):
            ranks[vi.name] = len(vi.type.tensor_type.shape.dim)
    constants = {init.name: init for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            value = _attr(node, "value")
            if value is not None:
                constants[node.output[0]] = value
    for init in model.graph.initializer:
        ranks[init.name] = len(init.dims)
    for name, t in constants.items():
        ranks.setdefault(name, len(t.dims))

    issues = []
    for i, node in enumerate(model.graph.node):
        name = node.name or f"#{i}"
        op = node.op_type
        if node.domain not in ("", "ai.onnx"):
            issues.append(OpIssue(op, name, f"custom domain '{node.domain}' is not an ONNX op Pulsar2 knows"))
        elif op not in AX650_OPS:
            issues.append(OpIssue(op, name, "not in the AX650 NPU operator list"))
        elif op == "Gather" and ranks.get(node.input[1], 1) != 1:
            issues.append(OpIssue(op, name, f"indices have rank {ranks[node.input[1]]}; AX650 supports 1-D only"))
        elif op == "Cast" and _attr(node, "to") not in CAST_TARGETS:
            target = TensorProto.DataType.Name(_attr(node, "to"))
            issues.append(OpIssue(op, name, f"cast to {target}; AX650 casts only to (u)int8/16/32 or float32"))
        elif op in ("ArgMax", "ArgMin") and _attr(node, "select_last_index", 0) != 0:
            issues.append(OpIssue(op, name, "select_last_index must be 0"))
        elif op == "Gemm" and (_attr(node, "alpha", 1.0) != 1.0 or _attr(node, "beta", 1.0) != 1.0):
            issues.append(OpIssue(op, name, "alpha/beta other than 1 are not supported"))
        elif op == "LayerNormalization" and _attr(node, "axis", -1) != -1:
            issues.append(OpIssue(op, name, "axis must be -1"))
        elif op == "Pow":
            exponent = constants.get(node.input[1])
            if exponent is None or int(np.prod(exponent.dims)) != 1:
                issues.append(OpIssue(op, name, "exponent must be a scalar initializer/constant"))
    return issues


def op_histogram(model: onnx.ModelProto) -> dict:
    counts: dict = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))

