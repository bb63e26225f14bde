"""Speed of the NumPy mode network on the digits and on MNIST.

1. Time per epoch (Adam, batch 32) of the mode network and of the dense baseline at equal width (digits).
2. Time of one forward + backward pass against the floor: the same matrix products, on arrays of
   the same shapes, done once by NumPy with nothing else (target: within 1.5x of the floor).
3. MNIST (when found: path, $ONLINEMDL_MNIST or the user cache): one epoch of 784-100-100-10 at batch
   100 (Adam), modes p = 30 and dense, against the floor of that epoch, 600 passes' matrix products
   (target: within 1.5x).

Run: python benchmarks/bench_modenet.py [--quick] [--threads N] [--mnist-only]

BLAS runs on ``--threads`` threads (default 1, through threadpoolctl when installed): the
products here are small, and a multi-threaded BLAS on a busy machine makes timings erratic.
"""
import argparse
import os
import time

import numpy as np

from onlinemdl.modenet import Adam, Network, digits, fit, mnist


def calls_for(fn, seconds=0.05, clock=time.perf_counter):
    """Number of calls of ``fn`` that take about ``seconds``."""
    t0, n = clock(), 0
    while clock() - t0 < seconds:
        fn()
        n += 1
    return n


def best_times(fns, repeat=15, clock=time.perf_counter):
    """Least mean time of each function by ``clock`` (wall time by default), rounds interleaved so that
    they share the machine's load."""
    counts = [calls_for(f, clock=clock) for f in fns]
    best = [np.inf] * len(fns)
    for _ in range(repeat):
        for i, (f, n) in enumerate(zip(fns, counts)):
            t0 = clock()
            for _ in range(n):
                f()
            best[i] = min(best[i], (clock() - t0) / n)
    return best


def product_shapes(net, B):
    """Shapes (a, b, c) of every (a x b) @ (b x c) product of one forward + backward pass."""
    shapes = []
    for l, (spec, layer) in enumerate(zip(net.specs, net.layers)):
        n_out, n_in = layer.weight().shape
        if spec["type"] == "dense":
            shapes += [(B, n_in, n_out), (n_out, B, n_in)] + ([(B, n_out, n_in)] if l else [])
        else:  # modes, lowrank, svd: rank p
            p = (layer.lam if hasattr(layer, "lam") else layer.U[0]).shape[0]
            shapes += [(B, n_in, p), (B, p, n_out), (B, n_out, p), (n_out, B, p), (n_in, B, p)]
            shapes += [(B, p, n_in)] if l else []
    return shapes


def floor_products(net, B):
    """The pass's matrix products alone, on C-contiguous operands of the same shapes and dtype."""
    rng = np.random.default_rng(0)
    ops = [(rng.standard_normal((a, b)).astype(net.dtype), rng.standard_normal((b, c)).astype(net.dtype))
           for a, b, c in product_shapes(net, B)]

    def products():
        for x, y in ops:
            x @ y
    return products


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer epochs and sizes")
    ap.add_argument("--threads", type=int, default=1, help="BLAS threads (default 1)")
    ap.add_argument("--mnist-only", action="store_true", help="only the MNIST epoch")
    args = ap.parse_args()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        print("threadpoolctl not installed: BLAS threads as set by the environment")
        run(args)
    else:
        with threadpool_limits(limits=args.threads, user_api="blas"):
            run(args)


def run(args):
    if not args.mnist_only:
        run_digits(args)
    run_mnist(args)


def run_mnist(args):
    try:
        d = mnist(dtype="float32")
    except FileNotFoundError as err:
        print(f"\nMNIST epoch skipped: {err}")
        return
    B = 100
    n = len(d.X_train)
    print(f"\nMNIST, 784-100-100-10, Adam, batch {B}: one update (mini-batch gather, forward + backward, Adam step) "
          f"against the floor (the pass's matrix products alone), interleaved, best of rounds; and one whole epoch "
          f"({n // B} updates) against {n // B} floors. Process CPU time (one BLAS thread: robust to other jobs on "
          f"the machine); BLAS threads {args.threads}; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    print(f"{'kind':>8} {'dtype':>8} {'params':>7} {'update ms':>10} {'floor ms':>9} {'ratio':>6} "
          f"{'epoch s':>8} {'floor s':>8} {'ratio':>6} {'test acc':>9}")
    for kind in ("modes", "dense"):
        for dtype in ("float32",) if args.quick else ("float32", "float64"):
            X, Xt = d.X_train.astype(dtype), d.X_test.astype(dtype)
            net = Network.build([784, 100, 100, 10], kind=kind, p=30, seed=0, dtype=dtype)
            opt = Adam(1e-4)
            order = np.random.default_rng(0).permutation(n)
            pos = [0]

            def update():
                idx = order[pos[0]:pos[0] + B]
                pos[0] = (pos[0] + B) % n
                _, grads = net.loss_and_grad(X[idx], d.y_train[idx], check=False)
                opt.step(net.params, grads)

            t_update, t_floor = best_times([update, floor_products(net, B)], repeat=5 if args.quick else 15,
                                           clock=time.process_time)
            net = Network.build([784, 100, 100, 10], kind=kind, p=30, seed=0, dtype=dtype)
            epochs = []
            for r in range(1 if args.quick else 3):  # the least of a few
                t0 = time.process_time()
                fit(net, X, d.y_train, epochs=1, batch_size=B, lr=0.01, seed=r, track_train=False)
                epochs.append(time.process_time() - t0)
            t_epoch = min(epochs)
            print(f"{kind:>8} {dtype:>8} {net.n_params():>7} {1e3 * t_update:>10.3f} {1e3 * t_floor:>9.3f} "
                  f"{t_update / t_floor:>6.2f} {t_epoch:>8.3f} {t_floor * (n // B):>8.3f} "
                  f"{t_epoch / (t_floor * (n // B)):>6.2f} {net.accuracy(Xt, d.y_test):>9.4f}")


def run_digits(args):
    d = digits()
    width, p, epochs = 256, 32, 2 if args.quick else 5
    print(f"digits: {len(d.X_train)} training images; network 64-{width}-{width}-10, p = {p}; "
          f"BLAS threads {args.threads}; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores\n")
    print("time per epoch (Adam, batch 32, float64)")
    print(f"{'kind':>14} {'params':>8} {'s/epoch':>9} {'vs dense':>9} {'test acc':>9}")
    rows = {}
    for kind in ("dense", "modes", "modes-untied", "lowrank", "svd"):
        net = Network.build([64, width, width, 10], kind=kind, p=p, seed=0)
        h = fit(net, d.X_train, d.y_train, epochs=epochs, batch_size=32, lr=3e-3, X_test=d.X_test, y_test=d.y_test)
        rows[kind] = np.median(h.seconds)
        print(f"{kind:>14} {net.n_params():>8} {rows[kind]:>9.4f} {rows[kind] / rows['dense']:>9.2f} {h.test_acc[-1]:>9.3f}")
    print("\nforward + backward pass against the floor (the same matrix products alone)")
    print(f"{'kind':>14} {'dtype':>8} {'batch':>6} {'pass ms':>9} {'floor ms':>9} {'ratio':>7}")
    batches = (32, 256) if args.quick else (32, 256, 1347)
    for kind in ("modes", "dense"):
        for dtype in ("float64", "float32"):
            net = Network.build([64, width, width, 10], kind=kind, p=p, seed=0, dtype=dtype)
            for B in batches:
                X, y = d.X_train[:B].astype(dtype), d.y_train[:B]
                t_pass, t_floor = best_times([lambda: net.loss_and_grad(X, y), floor_products(net, B)])
                print(f"{kind:>14} {dtype:>8} {B:>6} {1e3 * t_pass:>9.3f} {1e3 * t_floor:>9.3f} {t_pass / t_floor:>7.2f}")


if __name__ == "__main__":
    main()
