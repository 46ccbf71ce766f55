"""The ``fedswarm-graph/1`` vocabulary: which ATen ops, dtypes, memory formats and layouts a
graph may name, each mapped by *exact* string to the object the rebuilt graph uses.

Written out in code on purpose: the trainer never resolves a user string by attribute lookup, so
adding an op to a graph means adding a line here. :mod:`fedswarm.learning.graph` validates and
rebuilds graphs against these tables (and its exporter names ops through :data:`TARGET_NAMES`).
"""

from __future__ import annotations

import operator
from typing import Any

import torch

__all__ = [
    "ALLOWED_OPS",
    "DTYPES",
    "DTYPE_NAMES",
    "LAYOUTS",
    "MEMORY_FORMATS",
    "MEMORY_FORMAT_NAMES",
    "TARGET_NAMES",
    "TRAIN_FLAGS",
]

aten = torch.ops.aten

# The exact-match allowlist: JSON target string -> the callable used in the rebuilt graph.
# Written out in code on purpose: the trainer never resolves a user string by attribute lookup.
ALLOWED_OPS: dict[str, Any] = {
    # layers
    "aten.conv1d.default": aten.conv1d.default,
    "aten.conv2d.default": aten.conv2d.default,
    "aten.conv1d.padding": aten.conv1d.padding,
    "aten.conv2d.padding": aten.conv2d.padding,
    "aten.convolution.default": aten.convolution.default,
    "aten.linear.default": aten.linear.default,
    "aten.matmul.default": aten.matmul.default,
    "aten.mm.default": aten.mm.default,
    "aten.bmm.default": aten.bmm.default,
    "aten.addmm.default": aten.addmm.default,
    "aten.embedding.default": aten.embedding.default,
    "aten.batch_norm.default": aten.batch_norm.default,
    "aten.layer_norm.default": aten.layer_norm.default,
    "aten.group_norm.default": aten.group_norm.default,
    "aten.dropout.default": aten.dropout.default,
    "aten.feature_dropout.default": aten.feature_dropout.default,
    "aten.lstm.input": aten.lstm.input,
    "aten.gru.input": aten.gru.input,
    "aten.scaled_dot_product_attention.default": aten.scaled_dot_product_attention.default,
    # activations
    "aten.relu.default": aten.relu.default,
    "aten.relu_.default": aten.relu_.default,
    "aten.gelu.default": aten.gelu.default,
    "aten.silu.default": aten.silu.default,
    "aten.silu_.default": aten.silu_.default,
    "aten.sigmoid.default": aten.sigmoid.default,
    "aten.tanh.default": aten.tanh.default,
    "aten.hardtanh.default": aten.hardtanh.default,
    "aten.leaky_relu.default": aten.leaky_relu.default,
    "aten.elu.default": aten.elu.default,
    "aten.softmax.int": aten.softmax.int,
    "aten.log_softmax.int": aten.log_softmax.int,
    # pooling
    "aten.max_pool1d.default": aten.max_pool1d.default,
    "aten.max_pool2d.default": aten.max_pool2d.default,
    "aten.avg_pool1d.default": aten.avg_pool1d.default,
    "aten.avg_pool2d.default": aten.avg_pool2d.default,
    "aten.adaptive_avg_pool1d.default": aten.adaptive_avg_pool1d.default,
    "aten.adaptive_avg_pool2d.default": aten.adaptive_avg_pool2d.default,
    # shapes
    "aten.flatten.using_ints": aten.flatten.using_ints,
    "aten.view.default": aten.view.default,
    "aten.reshape.default": aten.reshape.default,
    "aten.permute.default": aten.permute.default,
    "aten.transpose.int": aten.transpose.int,
    "aten.t.default": aten.t.default,
    "aten.contiguous.default": aten.contiguous.default,
    "aten.unsqueeze.default": aten.unsqueeze.default,
    "aten.squeeze.dim": aten.squeeze.dim,
    "aten.squeeze.dims": aten.squeeze.dims,
    "aten.cat.default": aten.cat.default,
    "aten.stack.default": aten.stack.default,
    "aten.slice.Tensor": aten.slice.Tensor,
    "aten.select.int": aten.select.int,
    "aten.expand.default": aten.expand.default,
    "aten.repeat.default": aten.repeat.default,
    "aten.chunk.default": aten.chunk.default,
    "aten.split.Tensor": aten.split.Tensor,
    "aten.sym_size.int": aten.sym_size.int,
    "aten.clone.default": aten.clone.default,
    "aten.to.dtype": aten.to.dtype,
    "aten.type_as.default": aten.type_as.default,
    "aten.zeros_like.default": aten.zeros_like.default,
    "aten.ones_like.default": aten.ones_like.default,
    # arithmetic
    "aten.add.Tensor": aten.add.Tensor,
    "aten.add_.Tensor": aten.add_.Tensor,
    "aten.add.Scalar": aten.add.Scalar,
    "aten.sub.Tensor": aten.sub.Tensor,
    "aten.rsub.Scalar": aten.rsub.Scalar,
    "aten.mul.Tensor": aten.mul.Tensor,
    "aten.mul.Scalar": aten.mul.Scalar,
    "aten.div.Tensor": aten.div.Tensor,
    "aten.div.Scalar": aten.div.Scalar,
    "aten.neg.default": aten.neg.default,
    "aten.exp.default": aten.exp.default,
    "aten.log.default": aten.log.default,
    "aten.sqrt.default": aten.sqrt.default,
    "aten.rsqrt.default": aten.rsqrt.default,
    "aten.pow.Tensor_Scalar": aten.pow.Tensor_Scalar,
    "aten.abs.default": aten.abs.default,
    "aten.clamp.default": aten.clamp.default,
    "aten.mean.dim": aten.mean.dim,
    "aten.mean.default": aten.mean.default,
    "aten.sum.dim_IntList": aten.sum.dim_IntList,
    "aten.amax.default": aten.amax.default,
    # Python operators on tuples / symbolic ints (batch-size arithmetic)
    "operator.getitem": operator.getitem,
    "operator.mul": operator.mul,
    "operator.add": operator.add,
    "operator.sub": operator.sub,
    "operator.floordiv": operator.floordiv,
}
TARGET_NAMES: dict[Any, str] = {v: k for k, v in ALLOWED_OPS.items()}

# ops whose ``training``/``train`` flag is flipped for eval, with the flag's position and the
# position of an argument that must be non-None for the flip (batch_norm's running_mean:
# without running stats, nn.BatchNorm uses batch statistics in eval too)
TRAIN_FLAGS: dict[str, tuple[int, int | None]] = {
    "aten.batch_norm.default": (5, 3),
    "aten.dropout.default": (2, None),
    "aten.feature_dropout.default": (2, None),
    "aten.lstm.input": (6, None),
    "aten.gru.input": (6, None),
}

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
    "bfloat16": torch.bfloat16, "int64": torch.int64, "int32": torch.int32, "bool": torch.bool,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
MEMORY_FORMATS: dict[str, torch.memory_format] = {
    "contiguous_format": torch.contiguous_format,
    "preserve_format": torch.preserve_format,
    "channels_last": torch.channels_last,
}
MEMORY_FORMAT_NAMES = {v: k for k, v in MEMORY_FORMATS.items()}
LAYOUTS: dict[str, torch.layout] = {"strided": torch.strided}
