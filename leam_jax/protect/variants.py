"""The protections a run makes of each photo: ensembles x mask kinds x p x ε, and which are special."""

from __future__ import annotations

import dataclasses

from leam_jax.protect.config import ProtectConfig


@dataclasses.dataclass(frozen=True)
class Variant:
    """One protection of each photo: an ensemble of source models, a mask kind, p and ε."""

    ensemble: str  # "all" or "without_<model left out>"
    members: tuple[str, ...]
    kind: str
    percent: float
    epsilon: float

    @property
    def key(self) -> str:
        return f"{self.ensemble}/{self.kind}/p{self.percent:g}/e{self.epsilon:g}"


def variants(cfg: ProtectConfig) -> list[Variant]:
    """Every protection of a photo, in a fixed order (``full``: p = 100 only)."""
    out = []
    for eps in cfg.epsilons:
        for ens, members in cfg.ensembles:
            for kind in cfg.masks if ens == "all" else cfg.transfer_masks:
                for p in (100.0,) if kind == "full" else cfg.percents:
                    out.append(Variant(ens, members, kind, float(p), float(eps)))
    return out


def robust(cfg: ProtectConfig, v: Variant) -> bool:
    """Measured after every transform (and kept for protected-versus-protected pairs)."""
    return (v.ensemble == "all" and v.epsilon == cfg.robust_epsilon
            and (v.percent == cfg.robust_percent or v.kind == "full"))


def written(v: Variant) -> bool:
    """The product: the whole ensemble's LEAM masks, written as PNG and measured as read back."""
    return v.ensemble == "all" and v.kind == "leam"


def budget_dir(v: Variant) -> str:
    return f"p{v.percent:g}_e{v.epsilon:g}"
