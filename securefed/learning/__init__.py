"""The machine-learning side: model adapters, server strategies, partitioners, data loading.

Nothing here knows about secure aggregation: a model is a flat float64 vector
(:mod:`~securefed.learning.models`), the coordinator turns the aggregated mean
update into the next model (:mod:`~securefed.learning.strategies`), nodes load
and check their own data (:mod:`~securefed.learning.data`), and simulations split
a bundled dataset across nodes (:mod:`~securefed.learning.datasets`,
:mod:`~securefed.learning.partition`).
"""

from securefed.learning.data import LocalDataset, load_local_dataset, save_csv, save_npz
from securefed.learning.datasets import (
    BUNDLED_DATASETS,
    BundledDataset,
    Split,
    load_bundled,
    train_test_split_stratified,
)
from securefed.learning.models import (
    DEFAULT_TRAINING,
    MODEL_KINDS,
    EvalMetrics,
    MLPAdapter,
    ModelAdapter,
    SGDLogisticAdapter,
    make_adapter,
)
from securefed.learning.partition import PARTITIONERS, dirichlet, iid, kmeans_clusters, partition
from securefed.learning.strategies import (
    STRATEGIES,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedYogi,
    Strategy,
    make_strategy,
    mean_delta,
)

__all__ = [
    "BUNDLED_DATASETS",
    "DEFAULT_TRAINING",
    "MODEL_KINDS",
    "PARTITIONERS",
    "STRATEGIES",
    "BundledDataset",
    "EvalMetrics",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedYogi",
    "LocalDataset",
    "MLPAdapter",
    "ModelAdapter",
    "SGDLogisticAdapter",
    "Split",
    "Strategy",
    "dirichlet",
    "iid",
    "kmeans_clusters",
    "load_bundled",
    "load_local_dataset",
    "make_adapter",
    "make_strategy",
    "mean_delta",
    "partition",
    "save_csv",
    "save_npz",
    "train_test_split_stratified",
]
