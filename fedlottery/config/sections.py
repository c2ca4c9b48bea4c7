"""Config sections that both kinds of experiment use: the data set, the model and one training run's optimizer."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fedlottery.config.loader import _TRAINING_DEVICE, _check
from fedlottery.config.plugins import check_import_path


@dataclass
class DataConfig:
    """Which dataset, where its files are, and how much of the training set is held out for validation.

    ``dataset: hf`` reads a Hugging Face data set saved with ``DatasetDict.save_to_disk`` (splits ``train`` and
    ``test``) from `path`, offline; its images are in `image_column` (default ``image``) and its integer,
    ClassLabel or string labels in `label_column` (default ``label``). A user's own data set is named by the
    import path of its loader or by an entry point (docs/plugins.md); only the spelling is checked here, the
    loader is imported by fedlottery.data.check_data_config.
    """

    # digits (inside scikit-learn), mnist, fashion_mnist, cifar10, hf, or your own (docs/plugins.md): a loader's
    # import path package.module:function or the name of a `fedlottery.datasets` entry point
    dataset: str = "digits"
    root: str | None = None  # None: $FEDLOTTERY_DATA, then ../shared/data (a loader of your own that takes `root` gets it)
    val_size: int = 300  # `fedlottery imp`: training images held out for validation (federated: partition.val_fraction)
    path: str | None = None  # dataset hf: the directory save_to_disk wrote (relative: to the working directory)
    image_column: str | None = None  # dataset hf: None means "image"
    label_column: str | None = None  # dataset hf: None means "label"

    def validate(self, path: str) -> None:
        # The data set's name (and, for hf, the directory and columns) is checked against the loaders by
        # fedlottery.data.check_data_config.
        _check(self.val_size >= 0, f"{path}.val_size", "must be >= 0")
        check_import_path(self.dataset, f"{path}.dataset")
        for key in ("path", "image_column", "label_column"):
            value = getattr(self, key)
            if value is None:
                continue
            _check(self.dataset == "hf", f"{path}.{key}", f"only used with dataset: hf (the data set is "
                   f"{self.dataset!r}); remove it")
            _check(isinstance(value, str) and value != "", f"{path}.{key}", f"expected a non-empty string, got "
                   f"{value!r}")


@dataclass
class ModelConfig:
    """Architecture by registry name (or a user's own, docs/plugins.md) and the initialisation of its weights."""

    # a registry name (fedlottery.models.MODELS), e.g. lenet_300_100, lotteryfl_cnn_bn, or your own model
    # (docs/plugins.md): a builder's import path package.module:function or a `fedlottery.models` entry point
    name: str = "mlp_digits"
    # how conv and linear weights are drawn (biases start at zero); default: torch's own initialisation; keep:
    # as the builder made them (a user model's own initialisation)
    init: Literal["glorot_normal", "kaiming_normal", "default", "keep"] = "glorot_normal"
    # The name is resolved against the model registry and the plug-ins by fedlottery.runtime.experiment
    # (check_model_config); only an import path's spelling is checked here.

    def validate(self, path: str) -> None:
        check_import_path(self.name, f"{path}.name")


@dataclass
class TrainingConfig:
    """One training run: optimizer, schedule length and how often validation is checked (early stopping)."""

    optimizer: Literal["adam", "sgd"] = "adam"  # the optimizer of every training run
    lr: float = 1.2e-3  # learning rate (Frankle & Carbin's LeNet-300-100: Adam 1.2e-3)
    momentum: float = 0.0  # SGD momentum, in [0, 1)
    weight_decay: float = 0.0  # L2 penalty passed to the optimizer
    batch_size: int = 60  # images per step
    iterations: int = 2000  # optimizer steps per training run (one IMP level)
    eval_every: int = 100  # steps between validation checks; the minimum validation loss is the early stop
    lr_schedule: Literal["constant", "cosine"] = "constant"  # cosine: anneal over the run's iterations
    device: str = "cpu"  # cpu, cuda or cuda:<index>
    # "channels_last": conv models train with NHWC weights and batches on the CPU (0.75x the CPU for LotteryFL's
    # CNNs, 1.04x for LeNet-5-BN: benchmarks/results/training_memory_format.md); float rounding differs, so a
    # run in one layout is a different experiment from a run in the other. "contiguous": PyTorch's standard.
    memory_format: Literal["contiguous", "channels_last"] = "contiguous"

    def validate(self, path: str) -> None:
        _check(self.lr > 0, f"{path}.lr", "must be > 0")
        _check(0 <= self.momentum < 1, f"{path}.momentum", "must be in [0, 1)")
        _check(self.weight_decay >= 0, f"{path}.weight_decay", "must be >= 0")
        _check(self.batch_size >= 1, f"{path}.batch_size", "must be >= 1")
        _check(self.iterations >= 1, f"{path}.iterations", "must be >= 1")
        _check(1 <= self.eval_every, f"{path}.eval_every", "must be >= 1")
        _check(bool(_TRAINING_DEVICE.match(self.device)), f"{path}.device",
               f"{self.device!r} is not a device; use 'cpu', 'cuda' or 'cuda:<index>'")
