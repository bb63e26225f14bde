"""Teacher and student soft committee machines (conventions: theory/conventions.md).

A network's first layer is either a full matrix ``W`` (K x N) or mode-decomposed,
``W = A diag(lam) Xi^T`` with ``A`` (K x p), ``lam`` (p), ``Xi`` (N x p). Fields are
``h = W x / sqrt(N)``; outputs ``sum_i v_i g(h_i)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from .dynamics import FULL_FACTORS, MODE_FACTORS, check_train
from .gaussian import ACTIVATIONS
from .runsetup import check_choice, check_int as _check_int, check_number, generator


def _array(name, value) -> np.ndarray:
    """``value`` as a contiguous float array, or ValueError naming ``name``."""
    try:
        arr = np.asarray(value, dtype=float)
        return arr if arr.ndim == 0 else np.ascontiguousarray(arr)  # a scalar stays 0-d (broadcast by the caller)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an array of numbers, got {type(value).__name__}") from None


def _check_activation(activation):
    return check_choice("activation", activation, tuple(ACTIVATIONS))


def mode_scale(N: int) -> float:
    """Standard deviation (ln N)^(-1/6) of every mode factor entry (theory/conventions.md)."""
    return math.log(N) ** (-1.0 / 6.0) if N > 1 else 1.0


def default_modes(N: int, a: float = 1.0) -> int:
    """Number of modes p* = round(a ln N), at least 1."""
    return max(1, int(round(a * math.log(N))))


def random_modes(N, K, p, rng: np.random.Generator):
    """Mode factors ``A`` (K, p), ``lam`` (p), ``Xi`` (N, p), entries N(0, 1) x (ln N)^(-1/6), drawn in that order."""
    s = mode_scale(N)
    return s * rng.standard_normal((K, p)), s * rng.standard_normal(p), s * rng.standard_normal((N, p))


def second_layer(v, K, name="v"):
    """Second-layer weights: None gives 1/K (averaging committee), a scalar is broadcast."""
    if v is None:
        return np.full(K, 1.0 / K)
    arr = _array(name, v)
    if arr.ndim == 0:
        arr = np.full(K, float(arr))
    if arr.shape != (K,) or not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be a finite scalar or a vector of length {K}, got shape {arr.shape}")
    return arr.copy()


@dataclass
class Teacher:
    """Teacher committee: labels ``y = sum_n vt_n g(B_n x / sqrt N) + sigma zeta``.

    Attributes
    ----------
    B : (M, N) first-layer weights. ``A``, ``lam``, ``Xi`` are set for a mode teacher.
    vt : (M,) second-layer weights (default 1/M).
    sigma : output noise standard deviation.
    """

    B: np.ndarray
    vt: np.ndarray = None
    sigma: float = 0.0
    activation: str = "erf"
    A: np.ndarray | None = None
    lam: np.ndarray | None = None
    Xi: np.ndarray | None = None

    def __post_init__(self):
        self.B = _array("B", self.B)
        if self.B.ndim != 2 or not np.all(np.isfinite(self.B)):
            raise ValueError(f"B must be a finite (M, N) matrix, got shape {self.B.shape}")
        self.vt = second_layer(self.vt, self.M, "vt")
        self.sigma = check_number("sigma", self.sigma)
        _check_activation(self.activation)

    def check_finite(self):
        """ValueError naming the first weight array that holds NaN or infinity (e.g. set after construction)."""
        for name in ("B", "vt", "A", "lam", "Xi"):
            arr = getattr(self, name)
            if arr is not None and not np.all(np.isfinite(arr)):
                raise ValueError(f"teacher.{name} holds non-finite values (NaN or infinity)")

    @property
    def M(self) -> int:
        return self.B.shape[0]

    @property
    def N(self) -> int:
        return self.B.shape[1]

    @property
    def T(self) -> np.ndarray:
        """Teacher overlaps T = B B^T / N."""
        return self.B @ self.B.T / self.N

    @classmethod
    def random(cls, N: int, M: int, seed: int | None = None, **kw) -> Teacher:
        """Gaussian teacher, ``B_ij ~ N(0, 1)`` (so ``T ~ I``); ``seed`` an integer >= 0 or None."""
        N, M = _check_int("N", N), _check_int("M", M)
        return cls(generator(seed).standard_normal((M, N)), **kw)

    @classmethod
    def orthonormal(cls, N: int, M: int, seed: int | None = None, **kw) -> Teacher:
        """Teacher with orthogonal rows of squared norm N, so ``T = I`` exactly (needs M <= N)."""
        N, M = _check_int("N", N), _check_int("M", M)
        if M > N:
            raise ValueError(f"M must be <= N for an orthonormal teacher, got M={M}, N={N}")
        q, _ = np.linalg.qr(generator(seed).standard_normal((N, M)))
        return cls(math.sqrt(N) * q.T, **kw)

    @classmethod
    def modes(cls, N: int, M: int, p: int | None = None, a: float = 1.0, seed: int | None = None, **kw) -> Teacher:
        """Mode teacher ``B = A diag(lam) Xi^T`` with ``p* = round(a ln N)`` modes.

        Every entry of ``A``, ``lam``, ``Xi`` is N(0, 1) x (ln N)^(-1/6).
        """
        N, M = _check_int("N", N, 2), _check_int("M", M)
        a = check_number("a", a, strict=True)
        p = default_modes(N, a) if p is None else _check_int("p", p)
        if p > N:
            raise ValueError(f"p must be <= N, got p={p}, N={N}")
        A, lam, Xi = random_modes(N, M, p, generator(seed))
        return cls((A * lam) @ Xi.T, A=A, lam=lam, Xi=Xi, **kw)


class Student:
    """Student committee with a full or a mode-decomposed first layer.

    Build it with :meth:`full`, :meth:`modes` or :meth:`from_teacher_modes`, or directly from
    ``W`` (full) or ``A``, ``lam``, ``Xi`` (modes).

    Attributes
    ----------
    W : (K, N) first-layer weights (for a mode student the product ``A diag(lam) Xi^T``).
    A, lam, Xi : mode factors (None for a full student).
    v : (K,) second-layer weights.
    train : trained factors, a subset of ("w", "v") or of ("xi", "lam", "A", "v").
    weight_decay : decay rate ``kappa`` of the N-dimensional weights
        (each step multiplies them by ``1 - eta kappa / N``).
    batch : mini-batch size (the O(eta^2) terms of the dynamics carry 1 / batch).
    """

    def __init__(self, W: ArrayLike | None = None, A: ArrayLike | None = None, lam: ArrayLike | None = None,
                 Xi: ArrayLike | None = None, v: ArrayLike | float | None = None, train=None,
                 weight_decay: float = 0.0, batch: int = 1, activation: str = "erf"):
        self._W, self.A, self.lam, self.Xi = W, A, lam, Xi
        self.v, self.train, self.weight_decay, self.batch, self.activation = v, train, weight_decay, batch, activation
        if self._W is not None:
            if self.Xi is not None or self.A is not None or self.lam is not None:
                raise ValueError("give either W (full student) or A, lam, Xi (mode student), not both")
            self._W = _array("W", self._W)
            if self._W.ndim != 2:
                raise ValueError(f"W must be a (K, N) matrix, got shape {self._W.shape}")
            allowed = FULL_FACTORS
            default_train = ("w",)
        else:
            if self.Xi is None or self.A is None or self.lam is None:
                raise ValueError("a mode student needs A (K x p), lam (p) and Xi (N x p)")
            self.Xi = _array("Xi", self.Xi)
            self.A = _array("A", self.A)
            self.lam = _array("lam", self.lam).reshape(-1)
            p = self.lam.shape[0]
            if self.Xi.ndim != 2 or self.Xi.shape[1] != p:
                raise ValueError(f"Xi must be (N, p) with p = len(lam) = {p}, got shape {self.Xi.shape}")
            if self.A.ndim != 2 or self.A.shape[1] != p:
                raise ValueError(f"A must be (K, p) with p = len(lam) = {p}, got shape {self.A.shape}")
            if p > self.N:
                raise ValueError(f"p must be <= N, got p={p}, N={self.N}")
            allowed = MODE_FACTORS
            default_train = ("xi", "lam", "A")
        for name, arr in (("W", self._W), ("A", self.A), ("lam", self.lam), ("Xi", self.Xi)):
            if arr is not None and not np.all(np.isfinite(arr)):
                raise ValueError(f"{name} must be finite")
        train = check_train(default_train if self.train is None else self.train, allowed)
        self.train = tuple(t for t in allowed if t in train)
        self.v = second_layer(self.v, self.K)
        self.weight_decay = check_number("weight_decay", self.weight_decay)
        self.batch = _check_int("batch", self.batch)
        _check_activation(self.activation)

    def __repr__(self):
        shape = f"K={self.K}, N={self.N}" + (f", p={self.p}" if self.is_modes else "")
        return f"Student({'modes' if self.is_modes else 'full'}, {shape}, train={self.train}, {self.activation})"

    # --- shapes -----------------------------------------------------------------------
    @property
    def is_modes(self) -> bool:
        return self._W is None

    @property
    def K(self) -> int:
        return (self._W if self._W is not None else self.A).shape[0]

    @property
    def N(self) -> int:
        return self._W.shape[1] if self._W is not None else self.Xi.shape[0]

    @property
    def p(self) -> int | None:
        return None if self.lam is None else self.lam.shape[0]

    @property
    def W(self) -> np.ndarray:
        """First-layer weights (K x N); ``A diag(lam) Xi^T`` for a mode student."""
        if self._W is not None:
            return self._W
        return (self.A * self.lam) @ self.Xi.T

    def check_finite(self):
        """ValueError naming the first weight array that holds NaN or infinity (e.g. set after construction)."""
        for name in ("W", "A", "lam", "Xi", "v"):
            arr = self._W if name == "W" else getattr(self, name)
            if arr is not None and not np.all(np.isfinite(arr)):
                raise ValueError(f"student.{name} holds non-finite values (NaN or infinity)")

    # --- order parameters -------------------------------------------------------------
    def order_parameters(self, teacher: Teacher) -> dict[str, np.ndarray]:
        """Order parameters with ``teacher``: Q, R, T (and Rm, S for a mode student)."""
        if not isinstance(teacher, Teacher):
            raise TypeError(f"teacher must be a Teacher, got {type(teacher).__name__}")
        self.check_finite()
        teacher.check_finite()
        if teacher.N != self.N:
            raise ValueError(f"teacher and student must share N, got {teacher.N} and {self.N}")
        if teacher.activation != self.activation:
            raise ValueError("teacher and student must share the activation")
        N = self.N
        out = {"T": teacher.T}
        if self.is_modes:
            Rm = self.Xi.T @ self.Xi / N
            S = self.Xi.T @ teacher.B.T / N
            C = self.A * self.lam
            out.update(Rm=Rm, S=S, Q=C @ Rm @ C.T, R=C @ S)
        else:
            W = self._W
            out.update(Q=W @ W.T / N, R=W @ teacher.B.T / N)
        return out

    # --- constructors -----------------------------------------------------------------
    @classmethod
    def full(cls, N: int, K: int, init: str = "large", seed: int | None = None, teacher: Teacher | None = None,
             overlap: float = 0.5, scale: float = 1.0, **kw) -> Student:
        """Full-weight student.

        Parameters
        ----------
        init : "large" (entries N(0, scale^2), Q ~ scale^2 I), "small" (entries
            N(0, scale^2 / N): O(1/sqrt N) weights, Q and R of order 1/N), or "informed"
            (row i is ``overlap * B_(i mod M) + sqrt(1 - overlap^2) * noise``; needs ``teacher``).
        seed : an integer >= 0, or None for fresh entropy.
        """
        N, K = _check_int("N", N), _check_int("K", K)
        g = generator(seed)
        scale = check_number("scale", scale, strict=True)
        if init == "large":
            W = scale * g.standard_normal((K, N))
        elif init == "small":
            W = scale * g.standard_normal((K, N)) / math.sqrt(N)
        elif init == "informed":
            if teacher is None:
                raise ValueError('init="informed" needs teacher=')
            if teacher.N != N:
                raise ValueError(f"teacher must have N={N}, got {teacher.N}")
            if not (0.0 <= overlap <= 1.0):
                raise ValueError(f"overlap must be in [0, 1], got {overlap!r}")
            rows = teacher.B[np.arange(K) % teacher.M]
            W = overlap * rows + math.sqrt(1.0 - overlap**2) * g.standard_normal((K, N))
        else:
            raise ValueError(f'init must be one of "large", "small", "informed", got {init!r}')
        return cls(W=W, **kw)

    @classmethod
    def modes(cls, N: int, K: int, p: int, seed: int | None = None, **kw) -> Student:
        """Mode student with its own random factors, every entry N(0, 1) x (ln N)^(-1/6)."""
        N, K, p = _check_int("N", N, 2), _check_int("K", K), _check_int("p", p)
        if p > N:
            raise ValueError(f"p must be <= N, got p={p}, N={N}")
        A, lam, Xi = random_modes(N, K, p, generator(seed))
        return cls(A=A, lam=lam, Xi=Xi, **kw)

    @classmethod
    def from_teacher_modes(cls, teacher: Teacher, train=("xi",), seed: int | None = None, **kw) -> Student:
        """The paper's on-line setting: fresh random ``Xi``, ``A`` and ``lam`` copied from a
        mode teacher (so K = M), second-layer weights equal to the teacher's."""
        if teacher.Xi is None:
            raise ValueError("teacher must be a mode teacher (Teacher.modes)")
        g = generator(seed)
        Xi = mode_scale(teacher.N) * g.standard_normal(teacher.Xi.shape)
        kw.setdefault("v", teacher.vt.copy())
        kw.setdefault("activation", teacher.activation)
        return cls(A=teacher.A.copy(), lam=teacher.lam.copy(), Xi=Xi, train=train, **kw)
