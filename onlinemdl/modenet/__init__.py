"""The deep mode network, PyTorch-free: layers ``W = xi_out diag(lam) xi_in^T`` trained in NumPy,
baselines (dense, low-rank, SVD), offline data, analyses and the bridge to the on-line theory."""
from .data import Dataset, digits, read_idx, teacher_student, xor_dataset, xor_mixture
from .io import load, save
from .mnist_data import cache_dir as mnist_cache_dir, download_mnist, mnist
from .network import KINDS, Network, factor_scale
from .online import network_from_student, train_online
from .optim import SGD, Adam, schedule
from .train import History, fit, train_model

__all__ = ["Dataset", "digits", "mnist", "mnist_cache_dir", "download_mnist", "read_idx", "teacher_student",
           "xor_dataset", "xor_mixture", "load", "save",
           "KINDS", "Network", "factor_scale", "network_from_student", "train_online", "SGD", "Adam", "schedule",
           "History", "fit", "train_model"]
