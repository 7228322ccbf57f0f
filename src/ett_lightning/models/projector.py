"""MLP projector from tokenizer code space (D) to LLM hidden space (C)."""

from __future__ import annotations

from torch import Tensor, nn


class MLPProjector(nn.Sequential):
    """``depth`` linear layers with GELU between them (LLaVA-1.5 style; the paper uses depth 2).

    Hidden width defaults to ``out_dim``. Applied token-wise to [B, N, D] codebook embeddings.

    Args:
        in_dim: codebook embedding dimension (the tokenizer's ``code_dim``).
        out_dim: the LLM's hidden size.
        depth: number of linear layers.
        hidden_dim: width between them (default: ``out_dim``).
    """

    def __init__(self, in_dim: int, out_dim: int, depth: int = 2, hidden_dim: int | None = None) -> None:
        if depth < 1:
            raise ValueError(f"projector depth must be >= 1, got {depth}")
        hidden_dim = hidden_dim or out_dim
        widths = [in_dim] + [hidden_dim] * (depth - 1) + [out_dim]
        layers: list[nn.Module] = []
        for i in range(depth):
            if i > 0:
                layers.append(nn.GELU())
            layers.append(nn.Linear(widths[i], widths[i + 1]))
        super().__init__(*layers)
        self.in_dim = in_dim
        self.out_dim = out_dim
        self.depth = depth
        self.hidden_dim = hidden_dim

    def forward(self, embeddings: Tensor) -> Tensor:
        if embeddings.shape[-1] != self.in_dim:
            raise ValueError(
                f"projector expects {self.in_dim}-dim codebook embeddings, got shape {tuple(embeddings.shape)}; "
                "set projector.in_dim to the tokenizer's quantizer code_dim"
            )
        return super().forward(embeddings)
