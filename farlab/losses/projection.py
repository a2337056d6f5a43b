"""Projections map a student hidden state (width ``in_dim``) into the teacher's width (``out_dim``).

They are ordinary ``nn.Module``s owned by the feature loss, so they train with the student and live
in the objective's ``state_dict`` (save/resume keeps them). Inputs are cast to the projection's own
parameter dtype, so a float32 projection accepts bf16 hidden states.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from farlab.registry import Registry

PROJECTIONS: Registry[Callable[..., nn.Module]] = Registry("projection type")


class Projection(nn.Module):
    """Base: casts the input to the parameters' dtype before projecting."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim

    def project(self, x: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        p = next(self.parameters(), None)
        return self.project(x if p is None else x.to(p.dtype))


class IdentityProjection(Projection):
    """No parameters; only valid when the widths already match (DistilBERT-style feature losses)."""

    def __init__(self, in_dim: int, out_dim: int, **_: object) -> None:
        if in_dim != out_dim:
            raise ValueError(
                f"projection 'identity' needs equal widths but student hidden size is {in_dim} and teacher "
                f"hidden size is {out_dim}; use projection=linear or projection=mlp"
            )
        super().__init__(in_dim, out_dim)

    def project(self, x: Tensor) -> Tensor:
        return x


class LinearProjection(Projection):
    """FitNets regressor: one ``Linear(in, out)``, optionally followed by ``LayerNorm(out)``."""

    def __init__(self, in_dim: int, out_dim: int, layernorm: bool = False, **_: object) -> None:
        super().__init__(in_dim, out_dim)
        self.linear = nn.Linear(in_dim, out_dim)
        self.norm = nn.LayerNorm(out_dim) if layernorm else nn.Identity()

    def project(self, x: Tensor) -> Tensor:
        return self.norm(self.linear(x))


class MLPProjection(Projection):
    """``Linear(in, hidden) -> GELU -> Linear(hidden, out)`` [-> LayerNorm]; hidden defaults to out."""

    def __init__(
        self, in_dim: int, out_dim: int, layernorm: bool = False, hidden_size: int | None = None, **_: object
    ) -> None:
        super().__init__(in_dim, out_dim)
        hidden = hidden_size or out_dim
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))
        self.norm = nn.LayerNorm(out_dim) if layernorm else nn.Identity()

    def project(self, x: Tensor) -> Tensor:
        return self.norm(self.net(x))


for _name, _cls in (("identity", IdentityProjection), ("linear", LinearProjection), ("mlp", MLPProjection)):
    PROJECTIONS.register(_name, _cls)


def build_projection(
    type: str, in_dim: int, out_dim: int, layernorm: bool = False, hidden_size: int | None = None
) -> nn.Module:
    """One projection from student width ``in_dim`` to teacher width ``out_dim``."""
    return PROJECTIONS.get(type)(in_dim, out_dim, layernorm=layernorm, hidden_size=hidden_size)
