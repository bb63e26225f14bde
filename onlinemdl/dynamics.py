"""The description of the dynamics: what trains, at which rates, with which noise, decay,
batch and activation (theory/conventions.md, "SGD").

:class:`Dynamics` is frozen and validated once. The ODE, the SGD engine, the mode network's
on-line bridge, the scan recipes and the command line all read it; :meth:`Dynamics.pack`
turns it into the two arrays every Numba kernel takes. Adding a model option means: a field
here (with its check and its ``help``), its slot in :meth:`Dynamics.pack`, the kernels that
use it, and a test.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np

from .gaussian import activation_code
from .runsetup import check_choice, check_int, check_number

FULL_FACTORS = ("w", "v")
MODE_FACTORS = ("xi", "lam", "A", "v")
FACTORS = ("w", "xi", "lam", "A", "v")

# Slots of Dynamics.pack()'s float array ...
ETA, ETA_LAM, ETA_A, ETA_V, SIGMA, DECAY, INV_BATCH = range(7)
# ... and of its integer array (TRAIN_N: the N-dimensional weights, W or Xi, are trained).
TRAIN_N, TRAIN_LAM, TRAIN_A, TRAIN_V, ACT, BATCH = range(6)


def _opt(default, help: str, cli: bool = True):
    return field(default=default, metadata={"help": help, "cli": cli})


def check_train(train, allowed=FACTORS) -> tuple:
    """Trained factors as a tuple in canonical order: distinct names from ``allowed``, at least one."""
    if isinstance(train, str):
        train = (train,)
    try:
        names = tuple(train)
    except TypeError:
        raise ValueError(f"train must be a sequence of factor names from {allowed}, got {train!r}") from None
    if not names:
        raise ValueError(f"train must name at least one factor of {allowed} (nothing would learn)")
    if any(not isinstance(t, str) or t not in allowed for t in names) or len(set(names)) != len(names):
        raise ValueError(f"train must be distinct names from {allowed}, got {names!r}")
    if "w" in names and set(names) & {"xi", "lam", "A"}:
        raise ValueError(f"train mixes a full student's 'w' with mode factors: {names!r}")
    return tuple(t for t in FACTORS if t in names)


@dataclass(frozen=True)
class Dynamics:
    """How the student learns on-line (frozen; validated on construction).

    Attributes
    ----------
    train : trained factors, of ("w", "v") for a full student or ("xi", "lam", "A", "v") for a
        mode student.
    eta : rate of the N-dimensional weights (``W`` or ``Xi``), > 0.
    eta_lam, eta_A, eta_v : rates of the O(1) factors, applied as ``eta_x / N`` per step
        (None: ``eta``).
    sigma : standard deviation of the label noise.
    weight_decay : ``kappa``; every step multiplies the N-dimensional weights by ``1 - eta kappa / N``.
    batch : examples per SGD step (their gradients averaged).
    activation : "erf" (``erf(z / sqrt 2)``) or "linear".
    max_norm : a run has diverged once a squared norm exceeds ``max_norm`` times its scale.
    """

    train: tuple = field(metadata={"help": "trained factors", "cli": False})
    eta: float = _opt(None, "learning rate of the N-dimensional weights (W or Xi)")
    eta_lam: float | None = _opt(None, "learning rate of lam, applied as eta_lam / N per step (default: eta)")
    eta_A: float | None = _opt(None, "learning rate of A, applied as eta_A / N per step (default: eta)")
    eta_v: float | None = _opt(None, "learning rate of v, applied as eta_v / N per step (default: eta)")
    sigma: float = _opt(0.0, "standard deviation of the label noise")
    weight_decay: float = _opt(0.0, "weight decay kappa: each step scales W (or Xi) by 1 - eta kappa / N")
    batch: int = _opt(1, "examples per SGD step (gradients averaged)")
    activation: str = _opt("erf", "activation of teacher and student: erf (erf(z/sqrt2)) or linear")
    max_norm: float = _opt(1e2, "divergence threshold: a squared weight norm beyond max_norm x its scale")

    def __post_init__(self):
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen)
        set_("train", check_train(self.train))
        if self.eta is None:
            raise ValueError("eta must be given (the learning rate of the N-dimensional weights)")
        set_("eta", check_number("eta", self.eta, 0.0, strict=True))
        for name in ("eta_lam", "eta_A", "eta_v"):
            value = getattr(self, name)
            set_(name, self.eta if value is None else check_number(name, value))
        set_("sigma", check_number("sigma", self.sigma))
        set_("weight_decay", check_number("weight_decay", self.weight_decay))
        set_("batch", check_int("batch", self.batch))
        check_choice("activation", self.activation, ("erf", "linear"))
        set_("max_norm", check_number("max_norm", self.max_norm, 0.0, strict=True))

    @classmethod
    def from_networks(cls, student, teacher, *, eta, eta_lam=None, eta_A=None, eta_v=None,
                      max_norm=1e2) -> "Dynamics":
        """The dynamics of ``student`` learning from ``teacher``: the student's trained factors,
        weight decay, batch and activation, the teacher's label noise, and the given rates."""
        for name, net, attrs in (("student", student, ("train", "weight_decay", "batch", "activation")),
                                 ("teacher", teacher, ("B", "sigma", "activation"))):
            if not all(hasattr(net, a) for a in attrs):
                raise TypeError(f"{name} must be a {name.title()}, got {type(net).__name__}")
        if teacher.activation != student.activation:
            raise ValueError(f"teacher and student must share the activation, got {teacher.activation!r} "
                             f"and {student.activation!r}")
        return cls(train=student.train, eta=eta, eta_lam=eta_lam, eta_A=eta_A, eta_v=eta_v, sigma=teacher.sigma,
                   weight_decay=student.weight_decay, batch=student.batch, activation=student.activation,
                   max_norm=max_norm)

    @property
    def trains_n(self) -> bool:
        """Whether the N-dimensional weights (``W`` or ``Xi``) are trained."""
        return "w" in self.train or "xi" in self.train

    def pack(self) -> tuple[np.ndarray, np.ndarray]:
        """``(rates, flags)``: float64 and int64 arrays indexed by the slot constants of this module."""
        rates = np.empty(7)
        rates[[ETA, ETA_LAM, ETA_A, ETA_V]] = self.eta, self.eta_lam, self.eta_A, self.eta_v
        rates[SIGMA], rates[DECAY], rates[INV_BATCH] = self.sigma, self.weight_decay, 1.0 / self.batch
        flags = np.zeros(6, dtype=np.int64)
        flags[TRAIN_N], flags[TRAIN_LAM] = self.trains_n, "lam" in self.train
        flags[TRAIN_A], flags[TRAIN_V] = "A" in self.train, "v" in self.train
        flags[ACT], flags[BATCH] = activation_code(self.activation), self.batch
        return rates, flags

    def params(self) -> dict:
        """The description as a Trajectory's parameter record (the same keys from every engine)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["train"] = list(self.train)
        return out


#: Options of the dynamics that the command line and the scan recipes expose: name -> (default, help).
OPTIONS = {f.name: (f.default, f.metadata["help"]) for f in fields(Dynamics) if f.metadata.get("cli")}
