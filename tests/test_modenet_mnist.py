"""MNIST as users get it: the lookup order, the download from a mirror (a local HTTP server on
127.0.0.1, no internet), SHA-256 refusal of corrupt or truncated files leaving nothing, the CLI
command, and the real files' sanity figures when they are at hand."""
import functools
import gzip
import hashlib
import http.server
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from onlinemdl.modenet import cli as mcli, mnist, mnist_data

ROOT = Path(__file__).resolve().parents[1]


def mnist_folder():
    """The folder of the real MNIST files: $ONLINEMDL_MNIST, else ../shared/data/mnist next to the repository."""
    for folder in (os.environ.get("ONLINEMDL_MNIST"), ROOT.parent / "shared" / "data" / "mnist"):
        if folder and all((Path(folder) / n).is_file() for n in mnist_data.SHA256):
            return Path(folder)
    return None


needs_mnist = pytest.mark.skipif(mnist_folder() is None, reason="MNIST's four .gz files not found "
                                 "($ONLINEMDL_MNIST or ../shared/data/mnist); get them with "
                                 "'onlinemdl modenet mnist --download'")


@pytest.fixture
def serve():
    """serve(folder) -> base URL of a local HTTP server on 127.0.0.1 serving ``folder``."""
    servers = []

    def start(folder):
        handler = functools.partial(_QuietHandler, directory=str(folder))
        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        servers.append(httpd)
        return f"http://127.0.0.1:{httpd.server_address[1]}/"

    yield start
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def no_mnist_env(tmp_path, monkeypatch):
    """No $ONLINEMDL_MNIST, and the user cache in a fresh temporary folder."""
    monkeypatch.delenv(mnist_data.MNIST_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "onlinemdl" / "mnist"


def test_cache_folder_follows_xdg(no_mnist_env, monkeypatch):
    assert mnist_data.cache_dir() == no_mnist_env
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert mnist_data.cache_dir() == Path(os.path.expanduser("~")) / ".cache" / "onlinemdl" / "mnist"


def test_nothing_found_says_where_it_looked(no_mnist_env):
    with pytest.raises(FileNotFoundError, match="ONLINEMDL_MNIST.*cache folder.*download"):
        mnist()
    with pytest.raises(FileNotFoundError, match=r"\(path=\) does not exist"):
        mnist(no_mnist_env / "elsewhere")


@needs_mnist
def test_lookup_order_path_then_env_then_cache(no_mnist_env, tmp_path, monkeypatch):
    real = mnist_folder()
    cache = no_mnist_env
    cache.mkdir(parents=True)
    for name in mnist_data.SHA256:
        shutil.copyfile(real / name, cache / name)
    assert mnist_data.locate() == (cache, "cache")
    monkeypatch.setenv(mnist_data.MNIST_ENV, str(real))
    assert mnist_data.locate() == (real, "$ONLINEMDL_MNIST")
    assert mnist_data.locate(cache) == (cache, "path=")
    monkeypatch.setenv(mnist_data.MNIST_ENV, str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match=r"\$ONLINEMDL_MNIST\) does not exist"):
        mnist_data.locate()


@needs_mnist
def test_download_from_a_local_mirror_verifies_and_is_found_afterwards(no_mnist_env, serve, capsys):
    base = serve(mnist_folder())
    d = mnist(download=True, mirrors=[base], limit=5, dtype="float32")
    out = capsys.readouterr().out
    assert str(no_mnist_env) in out and "SHA-256 verified" in out and base in out
    assert sorted(os.listdir(no_mnist_env)) == sorted(mnist_data.SHA256)  # no temporary file left
    for name, sha in mnist_data.SHA256.items():
        assert hashlib.sha256((no_mnist_env / name).read_bytes()).hexdigest() == sha
    assert d.y_train.tolist() == [5, 0, 4, 1, 9] and d.X_train.dtype == np.float32
    assert mnist_data.locate() == (no_mnist_env, "cache")
    # a second download keeps the verified files and fetches nothing
    mnist_data.download_mnist(mirrors=["http://127.0.0.1:9/"], verbose=True)
    assert "present, SHA-256 verified" in capsys.readouterr().out


@needs_mnist
def test_a_dead_mirror_is_skipped_for_the_next(no_mnist_env, serve, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    folder = mnist_data.download_mnist(tmp_path / "to", mirrors=[serve(empty), serve(mnist_folder())], verbose=False)
    assert sorted(os.listdir(folder)) == sorted(mnist_data.SHA256)


@needs_mnist
@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
def test_a_corrupt_or_truncated_download_is_refused_and_leaves_nothing(no_mnist_env, serve, tmp_path, damage):
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in mnist_data.SHA256:
        raw = (mnist_folder() / name).read_bytes()
        raw = raw[:len(raw) // 2] if damage == "truncated" else raw[:100] + bytes([raw[100] ^ 1]) + raw[101:]
        (bad / name).write_bytes(raw)
    with pytest.raises(OSError, match="SHA-256 .* differs .*corrupt or truncated"):
        mnist(download=True, mirrors=[serve(bad)])
    assert not no_mnist_env.exists()  # nothing left: no file, no temporary, no folder
    with pytest.raises(OSError, match="could not download"):
        mnist_data.download_mnist(tmp_path / "keep", mirrors=[serve(bad)], verbose=False)
    assert not (tmp_path / "keep").exists()


def test_download_arguments_are_checked(tmp_path):
    with pytest.raises(ValueError, match="mirrors"):
        mnist_data.download_mnist(tmp_path, mirrors=[])
    with pytest.raises(ValueError, match="timeout"):
        mnist_data.download_mnist(tmp_path, mirrors=["http://127.0.0.1:9/"], timeout=0)
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="not a folder"):
        mnist_data.download_mnist(tmp_path / "file", mirrors=["http://127.0.0.1:9/"])
    with pytest.raises(ValueError, match="limit"):
        mnist(tmp_path, limit=0)


def test_a_truncated_gzip_idx_file_is_named(tmp_path):
    raw = gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 50]) + bytes(50))
    (tmp_path / "x-idx1-ubyte.gz").write_bytes(raw[:len(raw) // 2])
    with pytest.raises(ValueError, match="x-idx1-ubyte.gz is corrupt or truncated"):
        mnist_data.read_idx(tmp_path / "x-idx1-ubyte.gz")


@needs_mnist
def test_cli_mnist_download_and_find(no_mnist_env, serve, capsys):
    import argparse
    parser = argparse.ArgumentParser(prog="onlinemdl")
    mcli.add_subparser(parser.add_subparsers(dest="command", required=True))
    run = lambda *argv: (lambda a: a.func(a))(parser.parse_args(["modenet", "mnist", *argv]))  # noqa: E731
    assert run() == 2
    assert "MNIST not found" in capsys.readouterr().err
    assert run("--download", "--mirror", serve(mnist_folder()), "--quiet") == 0
    assert capsys.readouterr().out.strip() == f"MNIST is in {no_mnist_env}"
    assert run() == 0
    assert f"MNIST found in {no_mnist_env} (cache)" in capsys.readouterr().out


@pytest.mark.slow
@needs_mnist
def test_real_mnist_sanity_figures():
    d = mnist(mnist_folder(), dtype="float32")
    assert d.X_train.shape == (60000, 784) and d.X_test.shape == (10000, 784)
    assert d.y_train[:5].tolist() == [5, 0, 4, 1, 9]
    assert float(d.X_train.mean()) == pytest.approx(0.1307, abs=1e-4)
    assert np.bincount(d.y_test).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
