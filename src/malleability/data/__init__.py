"""Data: the registered data sets, their canonical file formats, downloads, subsets and the
differentiable preprocessing (docs/method.md §1)."""

from .arrays import read_array_file
from .dataset import Dataset
from .download import CHECKSUMS, MIRRORS, DownloadError, fetch_file, resolve_root
from .preprocess import Preprocessing, preprocess
from .readers import CifarArrays, read_cifar10, read_idx
from .registry import DATASETS, SPLITS, DatasetSpec, dataset_status, load_dataset
from .settings import DataSettings
from .subsets import Task, encode_targets, parse_classes, select_indices, stratified_sample

__all__ = [
    "CHECKSUMS",
    "DATASETS",
    "MIRRORS",
    "SPLITS",
    "CifarArrays",
    "DataSettings",
    "Dataset",
    "DatasetSpec",
    "DownloadError",
    "Preprocessing",
    "Task",
    "dataset_status",
    "encode_targets",
    "fetch_file",
    "load_dataset",
    "parse_classes",
    "preprocess",
    "read_array_file",
    "read_cifar10",
    "read_idx",
    "resolve_root",
    "select_indices",
    "stratified_sample",
]
