"""Plateaus, specialization, the mode-resolved picture, fixed points and escape times."""
import math
from dataclasses import replace

import numpy as np
import pytest

import onlinemdl as om
from onlinemdl import analysis as an

# Plateau boundaries are recovered to within this many decades of alpha (about 2 smoothing widths).
BOUNDARY_DECADES = 0.1


# --------------------------------------------------------------------------------------
# Fixtures: the two reference settings (theory/conventions.md), integrated once per module
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def classic():
    """K = M = 3, orthonormal teacher, small random init, v = 1/K, eta = 1: one symmetric plateau."""
    teacher = om.Teacher.orthonormal(1000, 3, seed=0)
    student = om.Student.full(1000, 3, init="small", seed=1)
    system, _ = om.OdeSystem.from_networks(student, teacher, eta=1.0)
    return om.integrate(student, teacher, eta=1.0, alpha_max=1e4), system


@pytest.fixture(scope="module")
def modes():
    """The paper's mode setting: N = 30, K = M = 8, p = 3, only Xi trained, eta = 5."""
    teacher = om.Teacher.modes(30, 8, seed=0)
    student = om.Student.from_teacher_modes(teacher, train=("xi",), seed=1)
    system, _ = om.OdeSystem.from_networks(student, teacher, eta=5.0)
    return om.integrate(student, teacher, eta=5.0, alpha_max=1e5), system, teacher


@pytest.fixture(scope="module")
def saddle():
    """The symmetric fixed point of the K = M = 3 classic system."""
    system = om.OdeSystem.from_state({"Q": 0.01 * np.eye(3), "R": np.zeros((3, 3))}, T=np.eye(3), train=("w",),
                                     eta=1.0)
    return om.symmetric_fixed_point(system), system


# --------------------------------------------------------------------------------------
# Plateau finder on synthetic curves
# --------------------------------------------------------------------------------------
def piecewise_curve(segments, x0=-2.0, x1=6.0, per_decade=60, eps0=1.0):
    """eps(alpha) whose decay exponent is constant on each segment: [(x_end, exponent), ...] in log10 alpha."""
    x = np.linspace(x0, x1, int((x1 - x0) * per_decade) + 1)
    s = np.select([x < xe for xe, _ in segments], [e for _, e in segments], segments[-1][1])
    y = np.log10(eps0) - np.concatenate(([0.0], np.cumsum(0.5 * (s[1:] + s[:-1]) * np.diff(x))))
    return 10**x, 10**y


TWO_PLATEAUS = [(0.0, 0.0), (1.0, 2.0), (2.0, 0.05), (2.5, 2.0), (3.5, 0.0), (6.0, 2.0)]  # exponents << flat


@pytest.mark.parametrize("noise", [0.0, 0.05])
def test_synthetic_plateaus_recovered(noise):
    alpha, eps = piecewise_curve(TWO_PLATEAUS)
    eps = eps * np.exp(noise * np.random.default_rng(3).standard_normal(eps.size))
    found = an.plateaus_in(alpha, eps)
    assert len(found) == 2 and found.stages == 3 and found.final is None
    for p, (lo, hi) in zip(found, [(1.0, 2.0), (2.5, 3.5)]):
        assert abs(math.log10(p.start) - lo) < BOUNDARY_DECADES
        assert abs(math.log10(p.end) - hi) < BOUNDARY_DECADES
        assert p.length == pytest.approx(p.end - p.start)
        assert p.start <= p.center <= p.end
    # the level is the error on the flat stretch
    assert found[0].level == pytest.approx(eps[np.searchsorted(alpha, 30.0)], rel=0.3)
    assert not found.shoulders and all(p.kind == "plateau" and p.depth > 1.5 for p in found)


def test_tilted_stretch_is_a_shoulder_not_a_plateau():
    """A stretch with exponent 0.2-0.5 between steep descents is a shoulder (exponent dips, stays > 0)."""
    for tilt in (0.2, 0.5):
        alpha, eps = piecewise_curve([(0.0, 0.0), (1.0, 2.0), (2.0, 0.1), (2.5, 2.0), (3.5, tilt), (6.0, 2.0)])
        found = an.plateaus_in(alpha, eps)
        assert len(found) == 1 and len(found.shoulders) == 1 and found.stages == 3
        sh = found.shoulders[0]
        assert sh.kind == "shoulder" and sh.slope == pytest.approx(tilt, abs=0.05)
        assert sh.depth == pytest.approx(2.0 - tilt, abs=0.1)
        assert abs(math.log10(sh.center) - 3.0) < 0.5 and sh.start < sh.center < sh.end
        assert [f.kind for f in found.features] == ["plateau", "shoulder"]
        assert "1 shoulder(s)" in found.summary()


def test_gently_entered_plateau_is_found():
    """Entry by a fall of only 6x, the exponent never above 0.8 on the way (issue 11)."""
    a = np.geomspace(1e-2, 1e4, 600)
    found = an.plateaus_in(a, 1e-3 * (1 + 5 * np.exp(-a)) / (1 + np.exp((a - 300) / 20)) + 1e-9)
    assert len(found) == 1
    assert 3 < found[0].start < 8 and 150 < found[0].end < 260
    assert found[0].level == pytest.approx(1e-3, rel=0.01)


def test_power_law_half_is_not_flat():
    """eps ~ alpha^-0.5 (and an informed student relaxing like it) has no plateau (issue 11)."""
    a = np.geomspace(1e-2, 1e5, 400)
    assert len(an.plateaus_in(a, a**-0.5)) == 0
    teacher = om.Teacher.orthonormal(1000, 2, seed=0)
    student = om.Student.full(1000, 2, init="informed", teacher=teacher, overlap=0.9, seed=1)
    found = an.find_plateaus(om.integrate(student, teacher, eta=0.5, alpha_max=1e4))
    assert len(found) == 0  # the dip of its exponent to 0.66 is a shoulder
    assert len(found.shoulders) == 1 and 0.5 < found.shoulders[0].slope < 0.8


def test_local_exponent_standard_error():
    """Jackknife standard error over replicas: about noise / sqrt(replicas) times the smoothing's gain."""
    alpha = np.geomspace(1e-2, 1e4, 300)
    rng = np.random.default_rng(1)
    eps = alpha**-1.0 * np.exp(0.05 * rng.standard_normal((16, alpha.size)))
    le = an.local_exponent(alpha, eps, smooth=0.1)
    assert le.replicas == 16 and le.sem is not None and le.sem.shape == le.exponent.shape
    inner = slice(50, -50)
    z = (le.exponent[inner] - 1.0) / le.sem[inner]
    assert 0.5 < np.std(z) < 1.6 and abs(np.mean(z)) < 1.0
    # the standard error matches the scatter of independent estimates
    others = [an.local_exponent(alpha, alpha**-1.0 * np.exp(0.05 * rng.standard_normal((16, alpha.size))),
                                smooth=0.1).exponent[inner] for _ in range(20)]
    assert np.median(le.sem[inner]) == pytest.approx(np.median(np.std(others, axis=0)), rel=0.35)
    auto = an.local_exponent(alpha, eps)  # "auto": the least smoothing with median sem <= SEM_TARGET
    assert np.median(auto.sem) <= an.SEM_TARGET and auto.smooth in an.AUTO_WIDTHS
    one = an.local_exponent(alpha, eps[0])
    assert one.sem is None and one.smooth == 0.05
    with pytest.raises(ValueError, match="auto"):
        an.local_exponent(alpha, eps[0], smooth="auto")


@pytest.mark.parametrize("curve", [
    lambda a: (1 + a) ** -1.0,
    lambda a: (1 + a / 10) ** -0.5,
    lambda a: (1 + a / 100) ** -2.0,
    lambda a: np.exp(-a / 100),
])
@pytest.mark.parametrize("noise", [0.0, 0.05])
def test_no_plateau_on_smooth_decay(curve, noise):
    alpha = np.geomspace(1e-2, 1e5, 500)
    eps = curve(alpha) * np.exp(noise * np.random.default_rng(4).standard_normal(alpha.size))
    found = an.plateaus_in(alpha, eps)
    assert len(found) == 0 and not found.shoulders and found.stages == 1


@pytest.mark.parametrize("noise", [0.0, 0.05])
def test_sum_of_separated_exponentials_has_a_shoulder(noise):
    """Rates 12x apart: the exponent rises, dips to ~0.9 when the slow term takes over, rises again."""
    alpha = np.geomspace(1e-2, 1e5, 500)
    eps = (3e-2 * np.exp(-alpha / 5) + 1e-3 * np.exp(-alpha / 60)) * np.exp(
        noise * np.random.default_rng(4).standard_normal(alpha.size))
    found = an.plateaus_in(alpha, eps)
    assert len(found) == 0 and len(found.shoulders) == 1 and found.stages == 2
    assert 20 < found.shoulders[0].center < 100


def test_final_flat_stretch_is_not_a_plateau():
    alpha, eps = piecewise_curve([(0.0, 0.0), (1.0, 2.0), (6.0, 0.0)])
    found = an.plateaus_in(alpha, eps)
    assert len(found) == 0
    assert found.final is not None and abs(math.log10(found.final.start) - 1.0) < BOUNDARY_DECADES
    assert abs(math.log10(found.onset) - 0.0) < BOUNDARY_DECADES


def test_short_flat_stretch_and_thresholds():
    alpha, eps = piecewise_curve([(0.0, 0.0), (1.0, 2.0), (1.1, 0.0), (4.0, 2.0)], x1=4.0)
    assert len(an.plateaus_in(alpha, eps, smooth=0.01)) == 0  # 0.1 decades < min_span
    assert len(an.plateaus_in(alpha, eps, smooth=0.01, min_span=0.05)) == 1
    alpha, eps = piecewise_curve([(0.0, 0.0), (1.0, 2.0), (2.0, 0.5), (4.0, 2.0)], x1=4.0)
    found = an.plateaus_in(alpha, eps)  # exponent 0.5 is not flat: a shoulder
    assert len(found) == 0 and len(found.shoulders) == 1
    assert len(an.plateaus_in(alpha, eps, flat=0.6)) == 1
    assert len(an.plateaus_in(alpha, eps, min_depth=1.6).shoulders) == 0


def test_converged_tail_and_grid_handling():
    alpha, eps = piecewise_curve(TWO_PLATEAUS)
    # alpha = 0 is skipped, and an error converged to rounding is cut by the floor
    tail_alpha = np.concatenate(([0.0], alpha, alpha[-1] * np.array([1.5, 2.0, 3.0])))
    tail_eps = np.concatenate(([eps[0]], eps, [1e-30, 0.0, -1e-17]))
    assert len(an.plateaus_in(tail_alpha, tail_eps)) == 2
    # a dense linear grid (as a simulation may record) gives the same plateaus
    lin = np.linspace(1e-2, 1e6, 200_001)
    dense = 10 ** np.interp(np.log10(lin), np.log10(alpha), np.log10(eps))
    assert len(an.plateaus_in(lin, dense)) == 2


@pytest.mark.parametrize("kw", [dict(flat=-0.1), dict(min_span=-1), dict(min_drop=-1), dict(min_depth=math.nan),
                                dict(min_width=-1), dict(smooth=-1), dict(floor=1.0)])
def test_plateau_criterion_errors(kw):
    alpha, eps = piecewise_curve(TWO_PLATEAUS)
    with pytest.raises(ValueError, match=next(iter(kw))):
        an.plateaus_in(alpha, eps, **kw)


def test_plateaus_in_shape_error():
    with pytest.raises(ValueError, match="same length"):
        an.plateaus_in(np.arange(3.0), np.arange(4.0))


# --------------------------------------------------------------------------------------
# Plateau finder on the two ODE settings
# --------------------------------------------------------------------------------------
def test_classic_has_one_symmetric_plateau(classic, saddle):
    traj, _ = classic
    found = an.find_plateaus(traj)
    assert len(found) == 1 and found.stages == 2
    p = found[0]
    assert 5 < p.start < 50 and 500 < p.end < 2000
    fp, _ = saddle
    assert p.level == pytest.approx(fp.eps_g, rel=1e-3)  # the plateau sits at the saddle's error
    assert p.slope < 0.01


def test_mode_setting_has_successive_shoulders(modes):
    """The published mode run's stages are shoulders: the exponent dips to ~0.3, never to 0 (issue 11)."""
    traj, _, _ = modes
    found = an.find_plateaus(traj)
    assert len(found) == 0 and len(found.shoulders) == 2 and found.stages == 3
    first, second = found.shoulders
    assert first.end < second.start and first.level > second.level
    assert 100 < first.center < 1000 and 3000 < second.center < 3e4
    assert all(0.2 < f.slope < 0.45 and f.depth > 1.0 for f in found.shoulders)


def test_find_plateaus_on_simulation_uses_replica_mean(classic):
    traj, _ = classic
    rng = np.random.default_rng(0)
    reps = lambda x: np.stack([x] * 6)
    sim = replace(traj, kind="sgd", eps_g=traj.eps_g * np.exp(0.03 * rng.standard_normal((6, traj.alpha.size))),
                  Q=reps(traj.Q), R=reps(traj.R), v=reps(traj.v))
    found = an.find_plateaus(sim)
    assert len(found) == 1 and not found.shoulders and found.sem is not None
    assert found[0].level == pytest.approx(an.find_plateaus(traj)[0].level, rel=0.05)


# --------------------------------------------------------------------------------------
# Specialization
# --------------------------------------------------------------------------------------
def constructed(perm, when, steepness, r_sym=0.55):
    """K = M = 3, T = I: node i moves from the symmetric overlap r_sym to teacher perm[i] at alpha = when[i]."""
    alpha = np.geomspace(1e-2, 1e5, 400)
    K = len(perm)
    R = np.full((alpha.size, K, K), r_sym)
    for i, (m, a_i, k) in enumerate(zip(perm, when, steepness)):
        sig = 1.0 / (1.0 + (a_i / alpha) ** k)  # 0 -> 1 around a_i
        R[:, i, :] = r_sym * (1 - sig)[:, None]
        R[:, i, m] = r_sym + (1 - r_sym) * sig
    Q = np.broadcast_to(np.eye(K), R.shape).copy()
    return om.Trajectory(alpha=alpha, steps=np.zeros(alpha.size, int), eps_g=np.zeros(alpha.size), Q=Q, R=R,
                         T=np.eye(K))


def test_specialization_known_answer():
    perm, when, k = [2, 0, 1], [100.0, 10.0, 1000.0], [10.0, 10.0, 1.0]
    spec = an.specialization(constructed(perm, when, k))
    np.testing.assert_array_equal(spec.matching, perm)
    np.testing.assert_array_equal(spec.best[-1], perm)
    np.testing.assert_array_equal(spec.order, [1, 0, 2])
    np.testing.assert_allclose(spec.alpha_specialized, when, rtol=0.02)
    np.testing.assert_allclose(spec.alpha_half, when, rtol=0.02)
    # 0.2 -> 0.8 of a logistic in log alpha takes log10(16) / k decades: sudden (k = 10), continuous (k = 1)
    np.testing.assert_allclose(spec.width, np.log10(16) / np.array(k), rtol=0.05)
    assert spec.spread == pytest.approx(2.0, abs=0.02)
    np.testing.assert_allclose(spec.index[-1], 1.0 / (1.0 + (np.array(when) / 1e5) ** np.array(k)))


def test_specialization_classic_is_sudden_and_simultaneous(classic):
    traj, _ = classic
    spec = an.specialization(traj)
    assert sorted(spec.matching) == [0, 1, 2]
    assert np.all(np.isfinite(spec.alpha_specialized))
    assert np.all((spec.alpha_specialized > 500) & (spec.alpha_specialized < 2500))
    assert np.all(spec.width < 0.6)  # a fraction of a decade
    assert spec.spread < 0.3
    np.testing.assert_allclose(spec.index[-1], 1.0, atol=1e-6)


def test_specialization_modes_is_continuous(modes):
    traj, _, _ = modes
    spec = an.specialization(traj)
    np.testing.assert_array_equal(spec.matching, np.arange(8))  # node i learns teacher node i
    assert np.all(spec.width > 0.7) and np.median(spec.width) > 1.0  # spread over decades
    assert np.all(np.isnan(spec.alpha_specialized))  # teacher nodes are nearly collinear (p = 3 < M = 8)


def test_specialization_simulation_replica(classic):
    traj, _ = classic
    R = np.stack([traj.R, traj.R[:, :, [1, 2, 0]]])
    sim = replace(traj, kind="sgd", eps_g=np.stack([traj.eps_g] * 2), Q=np.stack([traj.Q] * 2), R=R,
                  v=np.stack([traj.v] * 2))
    m0 = an.specialization(sim, replica=0).matching
    m1 = an.specialization(sim, replica=1).matching
    np.testing.assert_array_equal(np.array([1, 2, 0])[m1], m0)  # the labels differ, not the picture
    with pytest.raises(ValueError, match="replica"):
        an.specialization(sim, replica=2)


def test_specialization_does_not_move_on_the_symmetric_fixed_point(saddle):
    """A student sitting on the symmetric saddle: overlaps ~0.26 with every teacher node, progress exactly 0."""
    fp, _ = saddle
    n = 50
    alpha = np.geomspace(1.0, 1e4, n)
    Q = np.broadcast_to(fp.state["Q"], (n, 3, 3)).copy()
    R = np.broadcast_to(fp.state["R"], (n, 3, 3)).copy()
    R[0] += 1e-3 * np.eye(3)  # a little symmetry breaking at the start only
    traj = om.Trajectory(alpha=alpha, steps=np.zeros(n, int), eps_g=np.zeros(n), Q=Q, R=R, T=np.eye(3))
    spec = an.specialization(traj)
    assert np.abs(spec.progress).max() < 5e-3
    assert spec.kind == "none" and list(spec.node_kind) == ["none"] * 3


def test_specialization_kinds_classic_k2_issue_case():
    """Issue 11's case: K = M = 2, small init, eta = 0.5: sudden, both nodes together, flat on the plateau."""
    teacher = om.Teacher.orthonormal(1000, 2, seed=0)
    student = om.Student.full(1000, 2, init="small", seed=1)
    traj = om.integrate(student, teacher, eta=0.5, alpha_max=2000)
    spec = an.specialization(traj)
    assert spec.kind == "sudden" and list(spec.node_kind) == ["sudden", "sudden"]
    assert np.all(spec.width < 0.3) and spec.spread < 0.1
    assert np.all((spec.onset > 500) & (spec.end < 1200))
    on_plateau = (traj.alpha > 50) & (traj.alpha < 400)  # the symmetric plateau is not progress
    assert np.abs(spec.progress[on_plateau]).max() < 0.15
    assert "sudden" in spec.summary()


def test_specialization_kinds_settings(classic, modes):
    assert an.specialization(classic[0]).kind == "sudden"
    spec = an.specialization(modes[0])
    assert spec.kind == "continuous" and np.median(spec.width) > 1.0
    teacher = om.Teacher.orthonormal(100, 2, seed=0)
    at_teacher = om.Student.full(100, 2, init="informed", teacher=teacher, overlap=1.0, seed=1)
    spec = an.specialization(om.integrate(at_teacher, teacher, eta=0.5, alpha_max=100))
    assert spec.kind == "none" and np.all(np.isnan(spec.width))


@pytest.mark.slow
def test_specialization_kinds_on_the_sgd_replica_mean():
    """The replica mean with aligned nodes: sudden for the classic committee, continuous for the mode setting."""
    teacher = om.Teacher.orthonormal(500, 2, seed=0, vt=[1.0, 1.0])
    student = om.Student.full(500, 2, init="small", seed=1, v=[1.0, 1.0])
    sim = om.simulate(student, teacher, eta=0.5, alpha_max=600, replicas=4, seed=0, method="gram")
    spec = an.specialization(sim)
    assert spec.replicas == 4 and spec.sem is not None and spec.kind == "sudden"
    assert all(an.specialization(sim, replica=k).kind == "sudden" for k in range(4))
    teacher = om.Teacher.modes(30, 8, seed=0)
    student = om.Student.from_teacher_modes(teacher, train=("xi",), seed=1)
    sim = om.simulate(student, teacher, eta=5.0, alpha_max=3e4, points=120, replicas=2, seed=0, method="gram")
    spec = an.specialization(sim)
    assert spec.replicas == 2 and spec.kind == "continuous" and np.median(spec.width) > 1.0


def test_specialization_threshold_error(classic):
    with pytest.raises(ValueError, match="threshold"):
        an.specialization(classic[0], threshold=0.0)
    with pytest.raises(ValueError, match="levels"):
        an.specialization(classic[0], levels=(0.6, 0.8))
    with pytest.raises(ValueError, match="sudden"):
        an.specialization(classic[0], sudden=0.0)


# --------------------------------------------------------------------------------------
# The mode-resolved picture
# --------------------------------------------------------------------------------------
def test_mode_picture_explains_the_stages(modes):
    traj, _, teacher = modes
    pic = an.mode_picture(traj, teacher=teacher)
    strength = pic.strength[0]
    assert np.all(np.diff(strength) < 0) and strength[0] / strength[-1] > 100  # rates differ by orders
    # each direction of P is learned in turn, strongest first, and ends learned
    assert np.all(np.diff(pic.learned_at) > 0)
    np.testing.assert_array_less(0.95, pic.overlap[-1])
    found = an.find_plateaus(traj)
    # each shoulder waits for the directions still unlearned during it
    assert [list(u) for u in pic.attribute(found.shoulders)] == [[1, 2], [2]]
    for p, k in zip(found.shoulders, [1, 2]):
        assert p.center < pic.learned_at[k]
    # the residual error along u_k shrinks by orders of magnitude
    assert np.all(pic.residual[-1] < 0.05 * pic.residual[0])
    # lam is not trained: constant, ranked by |lam|; learned modes end on the teacher's modes
    np.testing.assert_allclose(pic.lam, np.broadcast_to(teacher.lam, pic.lam.shape))
    np.testing.assert_array_equal(pic.rank[-1], np.argsort(-np.abs(teacher.lam)))
    np.testing.assert_array_less(0.98, np.diag(pic.mode_overlap[-1]))


def test_mode_picture_needs_square_and_modes(classic):
    traj, _ = classic
    with pytest.raises(ValueError, match="P must be given"):
        an.mode_picture(traj)
    pic = an.mode_picture(traj, P=np.eye(3))  # full student: P = I, every direction equally fast
    assert pic.overlap.shape == (traj.alpha.size, 3) and pic.mode_overlap is None
    with pytest.raises(ValueError, match="K == M"):
        an.mode_picture(replace(traj, R=traj.R[:, :, :2], T=np.eye(2)))
    with pytest.raises(ValueError, match="mode-student"):
        an.mode_overlaps(traj)


# --------------------------------------------------------------------------------------
# Fixed points, stability and escape times
# --------------------------------------------------------------------------------------
def test_symmetric_fixed_point(saddle):
    fp, system = saddle
    assert fp.residual < 1e-10
    Q, R = fp.state["Q"], fp.state["R"]
    np.testing.assert_allclose(np.diag(Q), Q[0, 0], rtol=1e-9)
    np.testing.assert_allclose(R, R[0, 0], rtol=1e-9)
    assert fp.physical and fp.kind == "saddle"
    assert fp.mu_max > 0 and fp.unstable == 4  # symmetry breaking: 4 degenerate unstable directions
    np.testing.assert_allclose(fp.eigenvalues.real[:4], fp.mu_max, rtol=1e-6)
    # the extrapolated Jacobian agrees with plain central differences
    np.testing.assert_allclose(fp.jacobian, system.jacobian(fp.y), atol=1e-8)


def test_escape_time_matches_plateau_length(saddle):
    """ODE started on the saddle with symmetry breaking eps0: plateau length vs ln(1/eps0) / mu_max.

    The law holds up to an eps0-independent O(1/mu_max) offset (projection on the unstable
    directions, exit), plus a slowly varying -(1 / 2 mu_max) ln(alpha_end) that the log-log
    plateau criterion adds (theory/fixed_points.md, "Escape time"). Asymptotic accuracy: the
    increments agree to 8% as they stand (the correction is a factor 1 / (1 + 1 / (2 mu alpha)), 0.93
    to 0.95 here) and to 2% with it; the totals to 3 / mu_max.
    """
    fp, system = saddle
    B = np.eye(3) - 1.0 / 3.0
    B /= np.linalg.norm(B)
    eps0 = np.array([1e-3, 1e-5, 1e-7])  # above ~1e-8, rounding seeds its own symmetry breaking
    measured = []
    for e in eps0:
        state = dict(fp.state, R=fp.state["R"] + e * B)
        alpha = np.linspace(0.0, om.escape_time(fp, e) + 2000, 4000)
        traj = om.integrate(state=state, system=system, alpha=alpha, rtol=1e-10, atol=1e-14)
        found = an.find_plateaus(traj)
        assert len(found) == 0  # started on the plateau: it ends at the onset of the first descent
        measured.append(found.onset)
    measured = np.array(measured)
    predicted = np.array([om.escape_time(fp, e) for e in eps0])
    np.testing.assert_allclose(np.diff(measured) / np.diff(predicted), 1.0, atol=0.08)
    corrected = predicted - np.log(measured) / (2 * fp.mu_max)
    np.testing.assert_allclose(np.diff(measured) / np.diff(corrected), 1.0, atol=0.02)
    assert np.all(np.abs(measured - predicted) < 3.0 / fp.mu_max)


def test_plateau_fixed_point_of_classic_is_a_saddle(classic):
    traj, system = classic
    found = an.find_plateaus(traj)
    (fp,) = om.plateau_fixed_points(traj, system, found)
    assert fp is not None and fp.kind == "saddle" and fp.residual < 1e-10
    assert fp.eps_g == pytest.approx(found[0].level, rel=1e-3)
    assert 1e-3 < fp.mu_max < 1e-2


def test_mode_plateaus_are_not_saddles(modes):
    """No plateau of the mode setting sits at a saddle: the first has no fixed point near, the
    second is the slow relaxation into the stable global minimum."""
    traj, system, _ = modes
    found = an.find_plateaus(traj).shoulders
    first, second = om.plateau_fixed_points(traj, system, found)
    assert first is None
    assert second is not None and second.kind == "stable" and second.residual < 1e-10
    assert second.eps_g < 1e-15  # the teacher itself
    rates = -second.eigenvalues.real
    assert rates.max() / rates.min() > 1e3  # relaxation rates spread over orders of magnitude
    # the linearised flow around the minimum reproduces the plateau and its end
    i = traj.at(found[1].center)
    alpha = traj.alpha[i:]
    eps_lin = om.relaxation(second, system, om.state_at(traj, system, traj.alpha[i]), alpha)
    np.testing.assert_allclose(eps_lin, traj.eps_g[i:], rtol=0.2)


def test_fixed_point_errors(saddle, modes):
    fp, system = saddle
    with pytest.raises(ValueError, match="eps0"):
        om.escape_time(fp, 0.0)
    _, msystem, _ = modes
    with pytest.raises(ValueError, match="full-weight"):
        om.symmetric_fixed_point(msystem)
    asym = om.OdeSystem.from_state({"Q": 0.01 * np.eye(3), "R": np.zeros((3, 3)), "v": [0.2, 0.3, 0.5]},
                                   T=np.eye(3), train=("w",), eta=1.0)
    with pytest.raises(ValueError, match="uniform"):
        om.symmetric_fixed_point(asym)
    with pytest.raises(RuntimeError, match="no fixed point"):
        om.fixed_point(system, fp.y + 10.0, polish=0, tol=1e-30)


def test_escape_time_needs_unstable_direction(modes):
    traj, system, _ = modes
    stable = om.fixed_point(system, om.state_at(traj, system, traj.alpha[-1]))
    assert stable.kind == "stable"
    with pytest.raises(ValueError, match="unstable"):
        om.escape_time(stable, 1e-3)
