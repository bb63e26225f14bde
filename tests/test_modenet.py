"""The deep mode network: gradients, parameter sharing, initialisation, dtypes, optimisers,
storage, data loaders, and the measured accuracy on the digits."""
import gzip
import os

import numpy as np
import pytest
from scipy.special import erf

import onlinemdl as om
from onlinemdl.modenet import (
    KINDS,
    SGD,
    Adam,
    Network,
    digits,
    fit,
    io,
    mnist,
    read_idx,
    schedule,
    teacher_student,
    xor_dataset,
    xor_mixture,
)
from onlinemdl.modenet.train import train_model

ACTS = ("relu", "tanh", "erf", "linear")


def numerical_gradient(net, X, y, name, eps=1e-6):
    """Central finite differences of the loss with respect to net.params[name]."""
    w = net.params[name]
    g = np.zeros_like(w)
    for i in np.ndindex(w.shape):
        old = w[i]
        w[i] = old + eps
        lp = net.loss(X, y)
        w[i] = old - eps
        lm = net.loss(X, y)
        w[i] = old
        g[i] = (lp - lm) / (2 * eps)
    return g


def relative_error(a, b):
    return np.linalg.norm(a - b) / max(np.linalg.norm(a) + np.linalg.norm(b), 1e-300)


def check_gradients(net, X, y, tol=1e-6):
    _, grads = net.loss_and_grad(X, y)
    assert set(grads) == set(net.trainable)
    for name in net.trainable:
        err = relative_error(numerical_gradient(net, X, y, name), grads[name])
        assert err < tol, f"{name}: relative error {err:.2e}"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("output", ["softmax", "linear"])
def test_gradients_match_finite_differences(kind, output):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((6, 4))
    y = rng.integers(0, 3, 6) if output == "softmax" else rng.standard_normal((6, 3))
    for i, act in enumerate(ACTS):
        net = Network.build([4, 5, 6, 3], kind=kind, p=3, activation=act, output=output, seed=i)
        check_gradients(net, X, y)


def test_gradients_with_field_scale_untrained_bias_and_svd_penalty():
    rng = np.random.default_rng(1)
    X, y = rng.standard_normal((5, 7)), rng.standard_normal((5, 1))
    net = Network.build([7, 4, 1], kind="svd", p=3, activation="erf", output="linear", mu=3.0, seed=2)
    for name in ("U1", "V1"):  # move off orthonormality so that the penalty gradient is non-zero
        net.params[name] += 0.3 * rng.standard_normal(net.params[name].shape)
    assert net.penalty()[0] > 0.1
    check_gradients(net, X, y)
    net = Network.build([7, 4, 1], kind="modes", p=3, activation="tanh", output="linear", seed=3)
    net.specs[0]["scale"] = 1 / np.sqrt(7)
    net = Network(net.specs, net.params, net.activations, "linear", trainable=["xi0", "lam2", "b1"])
    check_gradients(net, X, y)


def test_tied_pattern_sets_are_shared_across_layers():
    net = Network.build([5, 6, 4, 3], kind="modes", p=2, seed=0)
    assert net.layers[0].xi_out is net.layers[1].xi_in is net.params["xi1"]
    assert net.layers[1].xi_out is net.layers[2].xi_in is net.params["xi2"]
    before = net.layers[1].weight().copy()
    net.layers[0].xi_out[2, 1] += 1.0  # a change made through layer 1 ...
    assert not np.allclose(net.layers[1].weight(), before)  # ... shows in layer 2
    # the shared array collects the gradient of both uses, and an update keeps the sharing
    X, y = np.random.default_rng(0).standard_normal((4, 5)), np.array([0, 1, 2, 0])
    _, grads = net.loss_and_grad(X, y)
    SGD(0.1).step(net.params, grads)
    assert net.layers[0].xi_out is net.layers[1].xi_in
    # pattern sets, lam and biases: (5 + 6 + 4 + 3) p + 3 p + (6 + 4 + 3)
    assert net.n_params() == 18 * 2 + 3 * 2 + 13
    untied = Network.build([5, 6, 4, 3], kind="modes-untied", p=2, seed=0)
    assert untied.layers[0].xi_out is not untied.layers[1].xi_in
    assert untied.n_params() == (5 + 6 + 6 + 4 + 4 + 3) * 2 + 3 * 2 + 13


def test_default_initialisation_variance():
    N, p = 400, 6
    net = Network.build([N, N, N], kind="modes", p=p, bias=False, seed=0)
    s = (N * np.log(N)) ** (-1 / 6)
    for name in ("xi0", "xi1", "lam1"):
        assert np.std(net.params[name]) == pytest.approx(s, rel=0.15 if name != "lam1" else 0.6)
    for layer in net.layers:  # Var(W_ij) = p / (N ln N), up to the sampling of p x 3 factors
        assert np.var(layer.weight()) * N * np.log(N) / p == pytest.approx(1.0, rel=0.5)
    for kind in ("dense", "lowrank", "svd"):
        W = Network.build([N, 50, 3], kind=kind, p=20, activation="tanh", seed=1).layers[0].weight()
        assert np.var(W) * N == pytest.approx(1.0, rel=0.3), kind


def test_float32_forward_backward_and_training_keep_the_dtype():
    d = digits()
    net64 = Network.build([64, 32, 10], kind="modes", p=8, seed=0)
    net32 = net64.astype("float32")
    z32, z64 = net32.forward(d.X_test), net64.forward(d.X_test)
    assert z32.dtype == np.float32
    np.testing.assert_allclose(z32, z64, rtol=1e-4, atol=1e-4)
    fit(net32, d.X_train, d.y_train, epochs=1, batch_size=64, lr=1e-2, optimizer="sgd", momentum=0.9)
    assert all(a.dtype == np.float32 for a in net32.params.values())


def test_same_seed_same_numbers():
    d = digits()
    a = train_model(d, [16], kind="modes-untied", p=4, epochs=2, seed=3)[1]
    b = train_model(d, [16], kind="modes-untied", p=4, epochs=2, seed=3)[1]
    np.testing.assert_array_equal(a.loss, b.loss)


def test_optimisers_and_schedules():
    # minimise 0.5 |w - 3|^2 (gradient w - 3)
    for opt in (SGD(0.1, momentum=0.5), Adam(0.1)):
        params = {"w": np.zeros(3)}
        for _ in range(300):
            opt.step(params, {"w": params["w"] - 3.0})
        np.testing.assert_allclose(params["w"], 3.0, atol=1e-3)
    assert schedule("step", step_size=2, gamma=0.1)(5) == pytest.approx(0.01)
    assert schedule("cosine", epochs=10)(0) == 1.0 and schedule("cosine", epochs=10)(10) == pytest.approx(0.0)
    assert schedule("exponential", gamma=0.5)(3) == 0.125
    # a diverging run stops with a status, not NaNs passed on silently
    d = xor_dataset(seed=0)
    net = Network.build([2, 16, 1], kind="modes", activation="linear", output="linear", seed=0)
    h = fit(net, d.X_train, d.y_train, epochs=5, optimizer="sgd", lr=1e3)
    assert h.status == "diverged" and "non-finite" in h.message


@pytest.mark.parametrize("call, match", [
    (lambda: Network.build([4, 3], kind="conv"), "kind must be one of"),
    (lambda: Network.build([4, 3, 2], kind="modes", p=[2, 3]), "p must be one integer"),
    (lambda: Network.build([4, 3, 2], kind="lowrank", p=0), "p must be a positive integer"),
    (lambda: Network.build([4, 3], activation="sigmoid"), "activation must be one of"),
    (lambda: Network.build([4, 3], output="hinge"), "output must be one of"),
    (lambda: Network.build([4, 3], dtype="float16"), "dtype must be one of"),
    (lambda: Network.build([4]), "widths must list"),
    (lambda: SGD(lr=-1), "lr must be"),
    (lambda: SGD(momentum=1.0), "momentum must be"),
    (lambda: schedule("warm"), "schedule must be one of"),
    (lambda: fit(Network.build([4, 3]), np.zeros((2, 4)), [0, 1], epochs=0), "epochs must be"),
    (lambda: digits(test_fraction=1.5), "test_fraction must be"),
])
def test_bad_input_names_the_parameter(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_digits_accuracy_mode_network_and_dense_baseline():
    """Measured: the mode network (p = 20 modes, 64-128-10) and the dense network reach >= 90 % on
    the held-out quarter of the digits in 20 epochs of Adam (about 95 % and 97 %, seed 0)."""
    d = digits()
    net, h = train_model(d, [128], kind="modes", p=20, epochs=20, lr=3e-3, seed=0)
    dense, hd = train_model(d, [128], kind="dense", epochs=20, lr=3e-3, seed=0)
    print(f"digits test accuracy: modes {h.test_acc[-1]:.4f} ({net.n_params()} parameters), "
          f"dense {hd.test_acc[-1]:.4f} ({dense.n_params()} parameters)")
    assert h.test_acc[-1] >= 0.90
    assert hd.test_acc[-1] >= 0.90
    assert net.n_params() < dense.n_params()


def test_hdf5_round_trip_is_exact_and_atomic(tmp_path):
    d = digits()
    net, h = train_model(d, [16, 16], kind="modes", p=4, epochs=1, seed=0)
    path = tmp_path / "m.h5"
    io.save(path, net, h, extra={"note": np.arange(3)})
    assert os.listdir(tmp_path) == ["m.h5"]  # no temporary file left behind
    net2, h2, extra = io.load(path)
    np.testing.assert_array_equal(net2.forward(d.X_test), net.forward(d.X_test))
    np.testing.assert_array_equal(h2.loss, h.loss)
    np.testing.assert_array_equal(extra["note"], np.arange(3))
    assert net2.layers[0].xi_out is net2.layers[1].xi_in  # sharing survives the round trip
    assert net2.meta == net.meta
    with pytest.raises(ValueError, match="not an onlinemdl.modenet model file"):
        io.save_arrays(tmp_path / "other.h5", {"a": np.zeros(2)})
        io.load(tmp_path / "other.h5")


def write_idx(path, array, gz=False):
    """An IDX file: two zero bytes, the type code (0x08 = uint8), ndim, big-endian sizes, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    opener = gzip.open if gz else open
    with opener(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_mnist_idx_loader_on_tiny_files(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    imgs, labels = rng.integers(0, 256, (5, 28, 28)), rng.integers(0, 10, 5)
    write_idx(tmp_path / "train-images-idx3-ubyte", imgs)
    write_idx(tmp_path / "train-labels-idx1-ubyte", labels)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", imgs[:3], gz=True)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels[:3], gz=True)
    np.testing.assert_array_equal(read_idx(tmp_path / "train-images-idx3-ubyte"), imgs)
    d = mnist(tmp_path)
    assert d.X_train.shape == (5, 784) and d.X_test.shape == (3, 784)
    np.testing.assert_allclose(d.X_train, imgs.reshape(5, -1) / 255.0)
    np.testing.assert_array_equal(d.y_test, labels[:3])
    monkeypatch.setenv("ONLINEMDL_MNIST", str(tmp_path))
    assert mnist(limit=2).X_train.shape == (2, 784)


def test_mnist_errors_are_clear(tmp_path, monkeypatch):
    monkeypatch.delenv("ONLINEMDL_MNIST", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match="ONLINEMDL_MNIST"):
        mnist()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        mnist(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="lacks t10k-images-idx3-ubyte"):
        write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((1, 2, 2)))
        write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(1))
        write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(1))
        mnist(tmp_path)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "bad")


def test_xor_mixture_and_its_2_3_1_mode_network():
    X, y = xor_mixture(20000, seed=0)
    centres = np.sign(X)  # nearly every point lies in its cluster's quadrant
    np.testing.assert_array_equal(np.unique(y), [-1.0, 1.0])
    agree = np.mean(y[:, 0] == -centres[:, 0] * centres[:, 1])
    assert agree > 0.95
    for sx, sy in [(1, 1), (-1, -1), (1, -1), (-1, 1)]:
        sel = (np.abs(X[:, 0] - 0.5 * sx) < 0.5) & (np.abs(X[:, 1] - 0.5 * sy) < 0.5)
        assert np.mean(y[sel] == -sx * sy) > 0.95
    # centres at +-0.5 and variance 0.05: Var(x_i) = 0.25 + 0.05, E[y x1 x2] = -0.25
    np.testing.assert_allclose(np.var(X, axis=0), 0.30, rtol=0.03)
    assert np.mean(y[:, 0] * X[:, 0] * X[:, 1]) == pytest.approx(-0.25, rel=0.03)
    data = xor_dataset(seed=0)
    net, h = train_model(data, [3], kind="modes", p=3, activation="tanh", epochs=60, lr=1e-2, seed=1)
    assert net.meta["widths"] == [2, 3, 1] and net.meta["p"] == [3, 3]
    assert h.test_acc[-1] > 0.9


def test_teacher_student_data():
    teacher = om.Teacher.random(N=30, M=3, seed=0, sigma=0.0)
    X, y = teacher_student(teacher, 500, seed=1)
    assert X.shape == (500, 30) and y.shape == (500, 1)
    np.testing.assert_allclose(y[:, 0], erf(X @ teacher.B.T / np.sqrt(30) / np.sqrt(2)) @ teacher.vt)
    assert abs(X.mean()) < 0.02 and X.var() == pytest.approx(1.0, rel=0.03)
    noisy = om.Teacher(teacher.B, sigma=0.5)
    _, y_noisy = teacher_student(noisy, 500, seed=1)
    assert np.std(y_noisy - y) == pytest.approx(0.5, rel=0.15)
