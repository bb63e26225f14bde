"""One run set-up shared by every engine (theory/conventions.md, "Time, seeds, divergence").

Argument checks, the alpha grid and the recording steps, the divergence threshold and the
replica random streams live here, so the ODE, the SGD engine and the mode network's on-line
bridge check and set up a run in exactly the same way. A leaf module: it imports NumPy only.
"""
from __future__ import annotations

import math
import numbers

import numpy as np


# --------------------------------------------------------------------------------------
# Argument checks: each names the parameter and what is allowed
# --------------------------------------------------------------------------------------
def check_int(name: str, value, low: int = 1) -> int:
    """``value`` as an int, or ValueError unless it is an integer >= ``low`` (bools refused)."""
    if not isinstance(value, (numbers.Integral, np.integer)) or isinstance(value, (bool, np.bool_)) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def check_number(name: str, value, low: float = 0.0, strict: bool = False) -> float:
    """``value`` as a float, or ValueError unless it is a finite real number >= ``low`` (> if ``strict``)."""
    ok = isinstance(value, (numbers.Real, np.floating, np.integer)) and not isinstance(value, (bool, np.bool_))
    if ok:
        value = float(value)
        ok = math.isfinite(value) and (value > low if strict else value >= low)
    if not ok:
        raise ValueError(f"{name} must be a finite number {'>' if strict else '>='} {low:g}, got {value!r}")
    return value


def check_choice(name: str, value, allowed) -> str:
    """``value`` unless it is not one of ``allowed``."""
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(repr(a) for a in allowed)}, got {value!r}")
    return value


def check_flag(name: str, value) -> bool:
    """A switch: True or False (NumPy's bools too; no 0, 1 or strings)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def check_fluctuation_mode(value):
    """``integrate``'s ``fluctuations``: False, True, "fixed" or "fresh" (no other numbers or strings)."""
    if not (value is False or value is True or (isinstance(value, str) and value in ("fixed", "fresh"))):
        raise ValueError(f'fluctuations must be False, True, "fixed" or "fresh", got {value!r}')
    return value


def check_seed(name: str, seed, allow_none: bool = False):
    """The one seed rule: an integer >= 0 (or None where fresh entropy is allowed)."""
    if seed is None and allow_none:
        return None
    if not isinstance(seed, (numbers.Integral, np.integer)) or isinstance(seed, (bool, np.bool_)) or seed < 0:
        extra = " or None" if allow_none else ""
        raise ValueError(f"{name} must be an integer >= 0{extra}, got {seed!r}")
    return int(seed)


def generator(seed, name: str = "seed") -> np.random.Generator:
    """A PCG64 generator from ``seed`` (an integer >= 0, or None for fresh entropy)."""
    return np.random.default_rng(check_seed(name, seed, allow_none=True))


def replica_streams(seed, replicas: int) -> list[np.random.Generator]:
    """Independent PCG64 streams spawned from ``SeedSequence(seed)``, one per replica: replica k
    draws the same numbers whatever the number of replicas run beside it or of threads."""
    seed = check_seed("seed", seed)
    return [np.random.Generator(np.random.PCG64(s)) for s in np.random.SeedSequence(seed).spawn(replicas)]


# --------------------------------------------------------------------------------------
# Time axis
# --------------------------------------------------------------------------------------
def alpha_grid(alpha_max, points: int = 200, alpha_min=None) -> np.ndarray:
    """Default output grid: 0 and ``points`` log-spaced values up to ``alpha_max``."""
    alpha_max = check_number("alpha_max", alpha_max, 0.0, strict=True)
    points = check_int("points", points, 2)
    lo = min(1e-2, alpha_max / 10) if alpha_min is None else check_number("alpha_min", alpha_min, 0.0, strict=True)
    return np.concatenate(([0.0], np.geomspace(lo, alpha_max, points)))


def check_alpha(alpha) -> np.ndarray:
    """Output times: a non-empty, finite, strictly increasing sequence of values >= 0."""
    try:
        alpha = np.asarray(alpha, dtype=float).ravel()
    except (TypeError, ValueError):
        raise ValueError(f"alpha must be a sequence of numbers, got {alpha!r}") from None
    if alpha.size < 1 or not np.all(np.isfinite(alpha)) or alpha[0] < 0 or np.any(np.diff(alpha) <= 0):
        raise ValueError("alpha must be a non-empty, finite, strictly increasing sequence of values >= 0")
    return alpha


def output_times(alpha=None, alpha_max=None, points: int = 200) -> np.ndarray:
    """The output times of a run: ``alpha`` given directly, or the default grid up to ``alpha_max``."""
    if alpha is not None and alpha_max is not None:
        raise ValueError("give alpha_max or alpha, not both")
    if alpha is None:
        if alpha_max is None:
            raise ValueError("give alpha_max or alpha")
        return alpha_grid(alpha_max, points)
    return check_alpha(alpha)


def record_steps(alpha, N: int) -> np.ndarray:
    """SGD steps at which a simulation records: ``round(alpha N)``, duplicates merged."""
    return np.unique(np.rint(check_alpha(alpha) * N).astype(np.int64))


# --------------------------------------------------------------------------------------
# Divergence
# --------------------------------------------------------------------------------------
def divergence_threshold(max_norm: float, T, Q0) -> float:
    """A run has diverged once a squared weight norm (``Q_ii``, or an entry of the mode state)
    exceeds ``max_norm`` times its scale ``max(1, max_n T_nn, max |Q0|)``."""
    scale = max(1.0, float(np.max(np.diag(T))), float(np.max(np.abs(Q0))))
    return max_norm * scale


def diverged_message(alpha: float) -> str:
    """The status message of a run that diverged at ``alpha``."""
    return f"diverged at alpha = {alpha:.6g} (weights ran away; eta too large?)"
