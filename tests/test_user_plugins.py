"""A user's own model and data set (docs/plugins.md): named by import path or entry point, checked once with a
one-line error naming the cause, turned into what fedlottery uses, and run end to end from the installed example
package (simulations/example_plugin)."""
from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch
from torch import nn

from fedlottery.config import ConfigError, DataConfig, FederatedConfig, PartitionConfig, from_dict
from fedlottery.config import plugins
from fedlottery.data import DATASETS, check_data_config, load_dataset, make_partitions
from fedlottery.data.plugin import to_record
from fedlottery.models import build_model, builder, head_names, prunable_names
import fedlottery.models as models
from fedlottery.runtime.experiment import experiment_from_dict, load_experiment

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "simulations" / "example_plugin"

USER_CODE = '''
import numpy as np
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, input_shape, num_classes, out=None):
        super().__init__()
        self.conv = nn.Conv2d(input_shape[0], 2, 3, padding=1)
        self.fc = nn.Linear(2 * input_shape[1] * input_shape[2], out or num_classes)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def build(input_shape, num_classes):
    return Net(input_shape, num_classes)


def declared(input_shape, num_classes):
    net = Net(input_shape, num_classes)
    net.prunable_parameters = ("fc.weight",)
    return net


def misdeclared(input_shape, num_classes):
    net = Net(input_shape, num_classes)
    net.prunable_parameters = ("fc.wieght",)
    return net


def constant(input_shape, num_classes):
    net = Net(input_shape, num_classes)
    nn.init.constant_(net.fc.weight, 0.5)
    return net


def wrong_output(input_shape, num_classes):
    return Net(input_shape, num_classes, out=num_classes + 2)


def fixed_size(input_shape, num_classes):
    return Net((1, 28, 28), num_classes)


def a_string(input_shape, num_classes):
    return "a network"


def no_linear(input_shape, num_classes):
    return nn.Sequential(nn.Conv2d(input_shape[0], num_classes, input_shape[1:]), nn.Flatten())


class Viewing(Net):
    def forward(self, x):
        x = torch.relu(self.conv(x))
        return self.fc(x.view(x.size(0), -1))


def viewing(input_shape, num_classes):
    return Viewing(input_shape, num_classes)


def no_arguments():
    return Net((1, 8, 8), 3)


NOT_CALLABLE = 3


def arrays():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 1, 8, 8)).astype(np.float32)
    return (x, np.arange(40) % 3), (x[:12], np.arange(12) % 3)


def uint8_grey():
    x = torch.full((6, 5, 5), 255, dtype=torch.uint8)
    return (x, torch.tensor([0, 1, 0, 1, 0, 1])), (x[:2], torch.tensor([0, 1])), 4


def with_root(root):
    global SEEN_ROOT
    SEEN_ROOT = root
    return arrays()


class Samples:
    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], self.labels[i]


def pil_samples():
    from PIL import Image

    images = [Image.fromarray(np.full((4, 6, 3), 51 * i, dtype=np.uint8)) for i in range(4)]
    return Samples(images, [0, 1, 2, 1]), Samples(images[:2], [np.int64(0), torch.tensor(1)])


def tensor_samples():
    images = [torch.full((2, 3, 3), float(i)) for i in range(5)]
    return Samples(images, [0, 1, 0, 1, 1]), Samples(images, [1, 0, 1, 0, 0])
'''


@pytest.fixture(autouse=True)
def fresh_resolution():
    """Resolved builders are memoised per name; a test's fake entry points must not leak into the next."""
    models._plugin_builder.cache_clear()
    yield
    models._plugin_builder.cache_clear()


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """USER_CODE as an importable module of a name no other test uses (so nothing is memoised across tests)."""
    name = f"user_plugin_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(USER_CODE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


class _EntryPoint:
    def __init__(self, name, value, obj):
        self.name, self.value, self._obj = name, value, obj

    def load(self):
        if isinstance(self._obj, Exception):
            raise self._obj
        return self._obj


def fake_entry_points(monkeypatch, group, **named):
    """Installed entry points of `group`, as if a package declared them: name=object (an exception: fails to load)."""
    found = [_EntryPoint(n.replace("_", "-"), f"pkg:{n}", obj) for n, obj in named.items()]
    wanted = group
    monkeypatch.setattr(plugins.metadata, "entry_points", lambda **kw: found if kw.get("group") == wanted else [])


# ---- models ---------------------------------------------------------------------------------------------------
def test_a_builder_by_import_path_prunes_its_conv_and_linear_weights(user_module):
    model = build_model(f"{user_module}:build", (1, 8, 8), 3)
    assert isinstance(model, nn.Module) and model(torch.zeros(5, 1, 8, 8)).shape == (5, 3)
    assert prunable_names(model) == ["conv.weight", "fc.weight"]
    assert head_names(model) == ["fc.weight", "fc.bias"]


def test_a_model_may_name_its_prunable_parameters(user_module):
    assert prunable_names(build_model(f"{user_module}:declared", (1, 8, 8), 3)) == ["fc.weight"]
    with pytest.raises(ConfigError, match=r"^model\.name: .*prunable_parameters = \('fc\.wieght',\).*unknown: "
                                          r"\['fc\.wieght'\]; known: conv\.weight, conv\.bias, fc\.weight, fc\.bias"):
        build_model(f"{user_module}:misdeclared", (1, 8, 8), 3)


def test_init_keep_leaves_the_builders_weights(user_module):
    assert torch.all(build_model(f"{user_module}:constant", (1, 8, 8), 3, init="keep").fc.weight == 0.5)
    assert not torch.all(build_model(f"{user_module}:constant", (1, 8, 8), 3).fc.weight == 0.5)  # glorot redraws


def test_the_output_check_leaves_batchnorm_statistics_alone():
    bn = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2 * 6 * 6, 3))
    before = {k: v.clone() for k, v in bn.state_dict().items()}
    models.check_user_model(bn, "bn-test", (1, 8, 8), 3)
    assert bn.training and all(torch.equal(before[k], v) for k, v in bn.state_dict().items())


@pytest.mark.parametrize("attribute,match", [
    ("wrong_output", r"gives \(2, 5\); expected a tensor of shape \(2, 3\)"),
    ("fixed_size", r"the forward pass fails on a batch of shape \(2, 1, 8, 8\): RuntimeError: .*size the first layer"),
    ("viewing", r"fails on a batch of shape \(2, 1, 8, 8\) in channels_last .*RuntimeError: view size.*"
                r"x\.flatten\(1\) or x\.reshape\(\.\.\.\), not x\.view"),
    ("a_string", r"returned a str, not a torch\.nn\.Module"),
    ("no_linear", r"no nn\.Linear layer to be its head; declare .*head_modules"),
    ("no_arguments", r"cannot be called as builder\(input_shape, num_classes\)"),
    ("NOT_CALLABLE", r"is a int, not a function or class"),
    ("nowhere", r"'user_plugin_\w+' has no attribute 'nowhere' \(it has: .*build"),
])
def test_a_bad_builder_is_refused_in_one_line(user_module, attribute, match):
    with pytest.raises(ConfigError, match=rf"^model\.name: .*{match}") as err:
        build_model(f"{user_module}:{attribute}", (1, 8, 8), 3)
    assert "\n" not in str(err.value)


def test_a_module_that_is_missing_or_broken_is_named(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match=r"^model\.name: cannot import module 'no_such_pkg\.nets' \(no module named "
                                          r"'no_such_pkg'\); fix: pip install"):
        builder("no_such_pkg.nets:build")
    (tmp_path / "broken_plugin_mod.py").write_text("import no_such_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match=r"importing 'broken_plugin_mod' failed: ModuleNotFoundError: .*"
                                          r"no_such_dependency.*python -c 'import broken_plugin_mod'"):
        builder("broken_plugin_mod:build")
    sys.modules.pop("broken_plugin_mod", None)


def test_a_misspelt_import_path_is_refused_at_config_load_without_importing():
    with pytest.raises(ConfigError, match=r"^model\.name: 'my pkg:build' is not an import path"):
        from_dict(FederatedConfig, {"model": {"name": "my pkg:build"}})
    with pytest.raises(ConfigError, match=r"^data\.dataset: 'pkg:' is not an import path"):
        from_dict(FederatedConfig, {"data": {"dataset": "pkg:"}})
    code = ("import sys; from fedlottery.config import from_dict, FederatedConfig; "
            "from_dict(FederatedConfig, {'model': {'name': 'nomod.nets:build'}, 'data': {'dataset': 'nomod.d:load'}}); "
            "print(sorted(m for m in ('torch', 'flwr', 'ray', 'nomod') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout
    assert out.strip() == "[]"


def test_an_entry_point_names_a_builder_and_unknown_names_list_the_choices(user_module, monkeypatch):
    module = __import__(user_module)
    fake_entry_points(monkeypatch, models.ENTRY_POINT_GROUP, my_net=module.build, broken=ImportError("gone"))
    assert builder("my-net") is module.build
    assert build_model("my-net", (1, 8, 8), 3).fc.out_features == 3
    with pytest.raises(ConfigError, match=r"^model\.name: unknown model 'vgg'; choose one of cnn_digits.*, installed "
                                          r"plug-ins: broken, my-net, or give a builder's import path"):
        builder("vgg")
    with pytest.raises(ConfigError, match=r"entry point 'broken' \(group fedlottery\.models\) = 'pkg:broken' does "
                                          r"not load: ImportError: gone"):
        builder("broken")
    assert builder("mlp_digits") is models.MODELS["mlp_digits"]  # the registry's names win


def test_the_experiment_check_resolves_the_model(user_module):
    assert experiment_from_dict({"model": {"name": f"{user_module}:build"}}).model.name.endswith(":build")
    with pytest.raises(ConfigError, match=r"^model\.name: .*has no attribute 'nope'"):
        experiment_from_dict({"model": {"name": f"{user_module}:nope"}})


# ---- data sets ------------------------------------------------------------------------------------------------
def test_arrays_become_the_dataset_record(user_module):
    d = load_dataset(f"{user_module}:arrays")
    assert (d.name, d.input_shape, d.num_classes, len(d.x_train), len(d.x_test)) == (
        f"{user_module}:arrays", (1, 8, 8), 3, 40, 12)
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    assert load_dataset(DataConfig(dataset=f"{user_module}:arrays")) is d  # memoised in-process


def test_uint8_grey_images_get_a_channel_and_are_scaled(user_module):
    d = load_dataset(f"{user_module}:uint8_grey")
    assert d.input_shape == (1, 5, 5) and d.num_classes == 4 and torch.all(d.x_train == 1.0)


def test_sample_sequences_pil_and_tensors(user_module):
    d = load_dataset(f"{user_module}:pil_samples")
    assert d.input_shape == (3, 4, 6) and d.num_classes == 3
    assert torch.allclose(d.x_train[:, 0, 0, 0], torch.tensor([0, 51, 102, 153]) / 255)
    assert d.y_test.tolist() == [0, 1]
    t = load_dataset(f"{user_module}:tensor_samples")
    assert t.input_shape == (2, 3, 3) and t.y_train.tolist() == [0, 1, 0, 1, 1]


def test_a_loader_asking_for_root_gets_the_data_root(user_module, tmp_path):
    load_dataset(DataConfig(dataset=f"{user_module}:with_root", root=str(tmp_path)))
    assert sys.modules[user_module].SEEN_ROOT == tmp_path.resolve()


X = torch.zeros(6, 1, 4, 4)
Y = torch.tensor([0, 1, 2, 0, 1, 2])


@pytest.mark.parametrize("returned,match", [
    ({"train": 1}, r"returned a dict; expected \(train, test\) or \(train, test, num_classes\)"),
    (((X.flatten(1), Y), (X, Y)), r"the train split: x has shape \(6, 16\); expected \(N, C, H, W\).*"
                                            r"reshape it to \(N, 1, 1, D\)"),
    (((X.long(), Y), (X, Y)), r"the train split: x is torch\.int64; expected floating point"),
    (((X, Y), (X.clone().fill_(float("nan")), Y)), r"the test split: x holds NaN"),
    (((X, Y.float()), (X, Y)), r"y is torch\.float32; expected integer class indices .*y\.long\(\)"),
    (((X, Y[:5]), (X, Y)), r"y has shape \(5,\); expected \(6,\), one label per image"),
    (((X, Y - 1), (X, Y)), r"negative label -1; number the classes from 0"),
    (((X, Y), (X, Y), 2), r"a label is 2 but num_classes is 2"),
    (((X, Y), (X, Y), "ten"), r"num_classes \(the third value returned\) is 'ten'"),
    (((X[:0], Y[:0]), (X, Y)), r"the train split is empty"),
    (((X, Y), (torch.zeros(6, 1, 5, 5), Y)), r"train images are \(1, 4, 4\) \(C, H, W\) but test images "
                                                       r"\(1, 5, 5\)"),
    (([(X[0], 0), "x"], (X, Y)), r"sample 1 is a str, not a pair \(x, y\)"),
    (([("pixels", 0)], (X, Y)), r"sample 0: the image is a str; expected a tensor.*ToTensor"),
    (([(X[0], "cat")], (X, Y)), r"sample 0: the label is 'cat' \(str\); expected an integer class index"),
    (([(X[0], 0), (X[0, :, :2], 1)], (X, Y)), r"the samples' images differ in shape"),
    (([], (X, Y)), r"the train split is empty"),
    ((3, (X, Y)), r"the train split is a int; expected a pair \(x, y\)"),
])
def test_a_bad_loader_result_is_refused_in_one_line(returned, match):
    with pytest.raises(ConfigError, match=rf"^data\.dataset: mine[: ].*{match}") as err:
        to_record("mine", returned)
    assert "\n" not in str(err.value)


def test_the_data_check_imports_the_loader_and_lists_the_choices(user_module, monkeypatch):
    check_data_config(DataConfig(dataset=f"{user_module}:arrays"))
    with pytest.raises(ConfigError, match=r"^data\.dataset: .*has no attribute 'nope'"):
        check_data_config(DataConfig(dataset=f"{user_module}:nope"))
    module = __import__(user_module)
    fake_entry_points(monkeypatch, "fedlottery.datasets", my_blobs=module.arrays)
    check_data_config(DataConfig(dataset="my-blobs"))
    assert load_dataset("my-blobs").num_classes == 3
    with pytest.raises(ConfigError, match=rf"^data\.dataset: unknown data set 'imagenet'; choose one of "
                                          rf"{', '.join(DATASETS)}, installed plug-ins: my-blobs, or give a loader's"):
        check_data_config(DataConfig(dataset="imagenet"))


def test_a_user_data_set_is_not_cached_on_disk(user_module, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("FEDLOTTERY_CACHE", str(cache))
    d = load_dataset(f"{user_module}:tensor_samples")
    make_partitions(d, PartitionConfig(scheme="shards", num_clients=2, shard_size=2, shards_per_client=1,
                                       val_fraction=0.0), seed=0)
    assert not cache.exists() or not any(cache.rglob("*"))


@pytest.mark.usefixtures("module_cache_dir")
@pytest.mark.parametrize("scheme", ["shards", "iid", "dirichlet", "pathological"])
def test_every_partition_scheme_takes_a_user_data_set(user_module, scheme):
    d = load_dataset(f"{user_module}:arrays")
    cfg = PartitionConfig(scheme=scheme, num_clients=4, shard_size=4, shards_per_client=2, alpha=1.0,
                          labels_per_client=2, val_fraction=0.2)
    splits = make_partitions(d, cfg, seed=0)
    assert len(splits) == 4 and all(len(s.train) > 0 for s in splits)
    assert sum(len(s.train) + len(s.val) for s in splits) <= len(d.y_train)


def test_the_example_config_by_import_path_loads_and_builds(monkeypatch):
    """simulations/example_plugin/config.yaml with the example's folder on sys.path (no installation needed)."""
    monkeypatch.syspath_prepend(str(EXAMPLE))
    cfg = load_experiment(EXAMPLE / "config.yaml")
    d = load_dataset(cfg.data)
    model = build_model(cfg.model.name, d.input_shape, d.num_classes, cfg.model.init)
    assert (d.input_shape, d.num_classes) == ((1, 8, 8), 4)
    assert prunable_names(model) == ["conv2.weight", "fc1.weight", "fc2.weight"]  # the example keeps conv1 dense
    samples = sys.modules["fedlottery_example.data"].load_samples()
    assert torch.equal(to_record("s", samples).x_train, d.x_train)  # both loaders give the same data


def test_the_docs_examples_work_and_quote_the_example_package():
    """docs/plugins.md's model and loader, executed as written; its entry-point table is the example's."""
    page = (ROOT / "docs" / "plugins.md").read_text()
    namespace: dict = {}
    for code in re.findall(r"```python\n(.*?)```", page, re.S):
        exec(compile(code, "docs/plugins.md", "exec"), namespace)
    d = to_record("doc", namespace["load"]())
    assert (d.input_shape, d.num_classes, len(d.y_train), len(d.y_test)) == ((1, 8, 8), 2, 200, 100)
    model = namespace["build"](d.input_shape, d.num_classes)
    models.check_user_model(model, "doc", d.input_shape, d.num_classes)
    table = re.search(r"```toml\n(.*?)```", page, re.S).group(1)
    assert table in (EXAMPLE / "pyproject.toml").read_text()


# ---- the example package, installed, in a real run --------------------------------------------------------------
@pytest.fixture(scope="module")
def installed_example(tmp_path_factory):
    """simulations/example_plugin installed into a temporary directory (offline: no index, no build isolation)."""
    where = tmp_path_factory.mktemp("example_plugin")
    source = where / "src"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                           "--quiet", "--target", str(where / "site"), str(source)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return where / "site"


@pytest.mark.slow
def test_the_installed_example_runs_by_entry_point_names(installed_example, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FEDLOTTERY_CACHE": str(tmp_path / "cache"),
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(installed_example)])}
    done = subprocess.run([sys.executable, "-m", "fedlottery.cli", "run", str(EXAMPLE / "config_entry_point.yaml"),
                           "--rounds", "2", "--out", str(out)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    with (out / "rounds.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["strategy"], r["round"]) for r in rows] == [("fedavg", "1"), ("fedavg", "2"), ("lotteryfl", "1"),
                                                           ("lotteryfl", "2")]
    assert all(r["failed_train_clients"] == "0" and r["failed_eval_clients"] == "0" and r["evaluated_clients"] == "4"
               for r in rows)
    assert all(0 <= float(r["personalized_acc_mean"]) <= 1 for r in rows)
    assert float(rows[-1]["density_mean"]) < 1.0  # lotteryfl pruned the example's declared prunable weights
