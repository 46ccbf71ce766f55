"""``fedswarm-seq/1``: a model as a JSON list of known layers, built by trainer-side code.

No user code runs on a trainer: every layer type maps through :data:`_BUILDERS` (a dict
written here, never ``getattr`` on a user string) to a constructor called with typed,
range-checked arguments validated by pydantic (``extra="forbid"``, so an unknown key or layer
type is an error, not ignored). Size budgets are enforced separately by
:mod:`fedswarm.learning.budget` on the meta device before any real allocation.

Example::

    {"format": "fedswarm-seq/1", "task": "classification", "input_shape": [64],
     "layers": [{"type": "Linear", "in_features": 64, "out_features": 10}],
     "loss": "cross_entropy", "optimizer": {"name": "sgd", "momentum": 0.9},
     "metrics": ["accuracy"], "train": {"lr": 0.05, "batch_size": 64, "epochs": 1}}
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal, Union

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from torch import nn

from fedswarm.protocol.decode import DecodeError, decode_json

SEQ_FORMAT = "fedswarm-seq/1"
MAX_SPEC_BYTES = 1 << 20
MAX_LAYERS = 256
MAX_NESTING = 4

Dim = Annotated[int, Field(ge=1, le=1 << 20)]
Kernel = Annotated[int, Field(ge=1, le=64)]
Stride = Annotated[int, Field(ge=1, le=64)]
Pad = Annotated[int, Field(ge=0, le=64)]
Prob = Annotated[float, Field(ge=0.0, lt=1.0)]
Eps = Annotated[float, Field(gt=0.0, le=1.0)]
Momentum = Annotated[float, Field(ge=0.0, le=1.0)]


class SpecError(ValueError):
    """A model spec that cannot be accepted; the message names the offending part."""


class _Layer(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LinearL(_Layer):
    type: Literal["Linear"]
    in_features: Dim
    out_features: Dim
    bias: bool = True


class Conv1dL(_Layer):
    type: Literal["Conv1d"]
    in_channels: Dim
    out_channels: Dim
    kernel_size: Kernel
    stride: Stride = 1
    padding: Pad = 0
    dilation: Annotated[int, Field(ge=1, le=16)] = 1
    groups: Annotated[int, Field(ge=1, le=4096)] = 1
    bias: bool = True


class Conv2dL(Conv1dL):
    type: Literal["Conv2d"]  # type: ignore[assignment]


class PoolL(_Layer):
    type: Literal["MaxPool1d", "MaxPool2d", "AvgPool1d", "AvgPool2d"]
    kernel_size: Kernel
    stride: Stride | None = None
    padding: Pad = 0


class BatchNormL(_Layer):
    type: Literal["BatchNorm1d", "BatchNorm2d"]
    num_features: Dim
    eps: Eps = 1e-5
    momentum: Momentum = 0.1
    affine: bool = True


class LayerNormL(_Layer):
    type: Literal["LayerNorm"]
    normalized_shape: list[Dim] = Field(min_length=1, max_length=4)
    eps: Eps = 1e-5
    elementwise_affine: bool = True


class DropoutL(_Layer):
    type: Literal["Dropout"]
    p: Prob = 0.5


class ActivationL(_Layer):
    type: Literal["ReLU", "GELU", "SiLU", "Tanh", "Sigmoid"]


class SoftmaxL(_Layer):
    type: Literal["Softmax"]
    dim: Annotated[int, Field(ge=-4, le=4)] = -1


class FlattenL(_Layer):
    type: Literal["Flatten"]
    start_dim: Annotated[int, Field(ge=1, le=4)] = 1


class EmbeddingL(_Layer):
    type: Literal["Embedding"]
    num_embeddings: Dim
    embedding_dim: Dim


class RecurrentL(_Layer):
    """LSTM/GRU over ``[batch, seq, features]`` (batch first).

    ``output="last"`` returns the top layer's output at the last time step ``[batch, H*D]``;
    ``output="sequence"`` returns every step ``[batch, seq, H*D]`` (D = 2 if bidirectional).
    """

    type: Literal["LSTM", "GRU"]
    input_size: Dim
    hidden_size: Dim
    num_layers: Annotated[int, Field(ge=1, le=8)] = 1
    bidirectional: bool = False
    dropout: Prob = 0.0
    output: Literal["last", "sequence"] = "last"


class ResidualL(_Layer):
    """``x + body(x)``: the body's output must have the input's shape."""

    type: Literal["Residual"]
    layers: list[LayerSpec] = Field(min_length=1, max_length=64)


LayerSpec = Annotated[
    Union[  # noqa: UP007 - pydantic discriminated unions read better this way
        LinearL, Conv1dL, Conv2dL, PoolL, BatchNormL, LayerNormL, DropoutL, ActivationL,
        SoftmaxL, FlattenL, EmbeddingL, RecurrentL, ResidualL,
    ],
    Field(discriminator="type"),
]
ResidualL.model_rebuild()

LossName = Literal["cross_entropy", "mse", "bce_with_logits"]
MetricName = Literal["loss", "accuracy", "f1_macro", "mse", "mae"]


class OptimizerSpec(BaseModel):
    """Optimizer from the allowlist: SGD (with momentum/Nesterov), Adam, AdamW."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Literal["sgd", "adam", "adamw"] = "sgd"
    momentum: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    nesterov: bool = False
    weight_decay: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    betas: tuple[Annotated[float, Field(ge=0.0, lt=1.0)], Annotated[float, Field(ge=0.0, lt=1.0)]] = (0.9, 0.999)
    eps: Annotated[float, Field(gt=0.0, le=1e-2)] = 1e-8

    @model_validator(mode="after")
    def _check(self) -> OptimizerSpec:
        if self.nesterov and (self.name != "sgd" or self.momentum <= 0):
            raise ValueError("nesterov needs the sgd optimizer with momentum > 0")
        return self


LR = Annotated[float, Field(gt=0.0, le=10.0)]
BatchSize = Annotated[int, Field(ge=1, le=65_536)]
Epochs = Annotated[int, Field(ge=1, le=100)]


class TrainDefaults(BaseModel):
    """Default local hyper-parameters, each within its allowed range."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    lr: LR = 0.01
    batch_size: BatchSize = 32
    epochs: Epochs = 1


class TrainingSpec(BaseModel):
    """What both model formats share: the task, loss, optimizer, metrics and defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task: Literal["classification", "regression"] = "classification"
    loss: LossName = "cross_entropy"
    optimizer: OptimizerSpec = OptimizerSpec()
    metrics: list[MetricName] = Field(default_factory=lambda: ["loss", "accuracy"], max_length=8)
    train: TrainDefaults = TrainDefaults()


class SeqSpec(TrainingSpec):
    """A ``fedswarm-seq/1`` model: per-sample input shape plus a list of layers."""

    format: Literal["fedswarm-seq/1"]
    input_shape: list[Dim] = Field(min_length=1, max_length=4)
    input_dtype: Literal["float32", "int64"] = "float32"
    layers: list[LayerSpec] = Field(min_length=1, max_length=MAX_LAYERS)

    @model_validator(mode="after")
    def _check(self) -> SeqSpec:
        _check_depth(self.layers, 1)
        if self.task == "regression" and self.loss == "cross_entropy":
            raise ValueError("a regression task needs the mse loss")
        return self


def _check_depth(layers: list[Any], depth: int) -> None:
    if depth > MAX_NESTING:
        raise ValueError(f"residual blocks nest deeper than {MAX_NESTING}")
    for layer in layers:
        if isinstance(layer, ResidualL):
            _check_depth(layer.layers, depth + 1)


def parse_seq_spec(data: str | bytes | dict[str, Any]) -> SeqSpec:
    """Validate a ``fedswarm-seq/1`` spec (JSON text or a parsed dict); raises :class:`SpecError`."""
    obj = _load_json(data)
    try:
        return SeqSpec.model_validate(obj)
    except ValidationError as exc:
        raise SpecError(f"invalid {SEQ_FORMAT} spec: {_first_errors(exc)}") from None


def _load_json(data: str | bytes | dict[str, Any]) -> dict[str, Any]:
    if isinstance(data, dict):
        return data
    if len(data) > MAX_SPEC_BYTES:
        raise SpecError(f"spec is {len(data)} bytes, over the {MAX_SPEC_BYTES}-byte cap")
    try:  # the bounded decoder: nesting depth checked before parsing (outside input)
        obj = decode_json(data, max_bytes=MAX_SPEC_BYTES, what="spec")
    except DecodeError as exc:
        raise SpecError(str(exc)) from None
    if not isinstance(obj, dict):
        raise SpecError("spec must be a JSON object")
    return obj


def _first_errors(exc: ValidationError, n: int = 3) -> str:
    parts = []
    for err in exc.errors()[:n]:
        loc = ".".join(str(p) for p in err["loc"])
        parts.append(f"{loc}: {err['msg']}")
    more = len(exc.errors()) - n
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


# ---- building (trusted code only) ----------------------------------------------------------


class _Recurrent(nn.Module):
    """Wraps nn.LSTM/nn.GRU so the layer outputs one tensor (see :class:`RecurrentL`)."""

    def __init__(self, rnn: nn.Module, output: str) -> None:
        super().__init__()
        self.rnn = rnn
        self.last = output == "last"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return out[:, -1, :] if self.last else out


class _Residual(nn.Module):
    def __init__(self, body: nn.Sequential) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _conv(cls: type[nn.Module]) -> Callable[[Any], nn.Module]:
    def make(s: Conv1dL) -> nn.Module:
        return cls(s.in_channels, s.out_channels, s.kernel_size, stride=s.stride,
                   padding=s.padding, dilation=s.dilation, groups=s.groups, bias=s.bias)
    return make


_POOLS: dict[str, type[nn.Module]] = {
    "MaxPool1d": nn.MaxPool1d, "MaxPool2d": nn.MaxPool2d,
    "AvgPool1d": nn.AvgPool1d, "AvgPool2d": nn.AvgPool2d,
}
_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "ReLU": nn.ReLU, "GELU": nn.GELU, "SiLU": nn.SiLU, "Tanh": nn.Tanh, "Sigmoid": nn.Sigmoid,
}
_BATCHNORMS: dict[str, type[nn.Module]] = {"BatchNorm1d": nn.BatchNorm1d, "BatchNorm2d": nn.BatchNorm2d}
_RNNS: dict[str, type[nn.Module]] = {"LSTM": nn.LSTM, "GRU": nn.GRU}


def _build_layer(s: Any) -> nn.Module:
    if isinstance(s, ResidualL):
        return _Residual(nn.Sequential(*[_build_layer(x) for x in s.layers]))
    builder = _BUILDERS[type(s)]  # keyed by our own pydantic class, never a user string
    return builder(s)


_BUILDERS: dict[type, Callable[[Any], nn.Module]] = {
    LinearL: lambda s: nn.Linear(s.in_features, s.out_features, bias=s.bias),
    Conv1dL: _conv(nn.Conv1d),
    Conv2dL: _conv(nn.Conv2d),
    PoolL: lambda s: _POOLS[s.type](s.kernel_size, stride=s.stride, padding=s.padding),
    BatchNormL: lambda s: _BATCHNORMS[s.type](s.num_features, eps=s.eps, momentum=s.momentum, affine=s.affine),
    LayerNormL: lambda s: nn.LayerNorm(s.normalized_shape, eps=s.eps, elementwise_affine=s.elementwise_affine),
    DropoutL: lambda s: nn.Dropout(s.p),
    ActivationL: lambda s: _ACTIVATIONS[s.type](),
    SoftmaxL: lambda s: nn.Softmax(dim=s.dim),
    FlattenL: lambda s: nn.Flatten(start_dim=s.start_dim),
    EmbeddingL: lambda s: nn.Embedding(s.num_embeddings, s.embedding_dim),
    RecurrentL: lambda s: _Recurrent(
        _RNNS[s.type](s.input_size, s.hidden_size, num_layers=s.num_layers, batch_first=True,
                      bidirectional=s.bidirectional, dropout=s.dropout if s.num_layers > 1 else 0.0),
        s.output,
    ),
}


def build_seq_module(spec: SeqSpec, device: str | torch.device = "cpu") -> nn.Sequential:
    """Build the module for ``spec`` on ``device`` (use ``"meta"`` for a no-allocation dry run).

    Parameters are initialised by PyTorch's defaults; callers load the job's global weights.
    """
    with torch.device(device):
        return nn.Sequential(*[_build_layer(s) for s in spec.layers])


def make_loss(name: LossName) -> nn.Module:
    """The loss module for an allowlisted loss name."""
    return {"cross_entropy": nn.CrossEntropyLoss, "mse": nn.MSELoss,
            "bce_with_logits": nn.BCEWithLogitsLoss}[name]()


def make_optimizer(spec: OptimizerSpec, params: Any, lr: float) -> torch.optim.Optimizer:
    """The optimizer for an allowlisted optimizer spec."""
    if spec.name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=spec.momentum, nesterov=spec.nesterov,
                               weight_decay=spec.weight_decay, foreach=False)
    cls = torch.optim.Adam if spec.name == "adam" else torch.optim.AdamW
    return cls(params, lr=lr, betas=spec.betas, eps=spec.eps, weight_decay=spec.weight_decay,
               foreach=False)
