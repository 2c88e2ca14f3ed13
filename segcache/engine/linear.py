"""The linear layers of the lean forward, behind one call: `y = linear(x)`, x (M, in) -> y (M, out).

The forward never touches weight tensors directly, so the storage format of a projection (dense
bfloat16/float32 today; packed integer formats can sit behind the same call) is this module's
business alone, and the forward and the batching scheduler stay the same whatever the format.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class DenseLinear:
    """A dense weight (out, in) and optional bias (out,), in the model's dtype."""

    format_name = "dense"

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        self.weight, self.bias = weight, bias

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)
