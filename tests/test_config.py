"""Config loading: unknown keys, wrong types and impossible values fail up front, naming the key."""
import subprocess
import sys
from pathlib import Path

import pytest

from fedlottery.config import (ConfigError, FederatedConfig, ImpConfig, from_dict, load_imp_config, load_yaml,
                               set_dotted)
from fedlottery.runtime.experiment import check_imp_experiment, experiment_from_dict, load_experiment

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_are_valid():
    cfg = from_dict(ImpConfig, {})
    assert cfg.data.dataset == "digits" and cfg.pruning.rate == 0.2


def test_shipped_configs_load():
    """Every file in configs/ loads, so none rots unnoticed: imp_*.yaml as IMP configs, the rest as federated
    experiments with every check the command line makes before it starts."""
    paths = sorted((ROOT / "configs").glob("*.y*ml"))
    assert {p.name for p in paths} >= {"default.yaml", "imp_digits.yaml", "table2_mnist.yaml"}
    for path in paths:
        if path.name.startswith("imp_"):
            assert load_imp_config(path).pruning.levels > 0, path.name
        else:
            load_experiment(str(path))
    assert load_imp_config("configs/imp_lenet_mnist.yaml").pruning.output_rate == 0.1


@pytest.mark.parametrize(
    "data,key",
    [
        ({"pruning": {"rate": 1.5}}, "pruning.rate"),
        ({"pruning": {"rate": 0}}, "pruning.rate"),
        ({"pruning": {"output_rate": -0.1}}, "pruning.output_rate"),
        ({"pruning": {"target_density": 1.0}}, "pruning.target_density"),
        ({"pruning": {"scope": "everywhere"}}, "pruning.scope"),
        ({"pruning": {"rewind": "iteration", "rewind_iteration": 5000}}, "pruning.rewind_iteration"),
        ({"pruning": {"layer_rates": {"fc.weight": 2}}}, "pruning.layer_rates.fc.weight"),
        ({"data": {"dataset": "imagenet"}}, "data.dataset"),
        ({"data": {"datset": "mnist"}}, "data.datset"),
        ({"model": {"name": "vgg99"}}, "model.name"),
        ({"training": {"lr": "fast"}}, "training.lr"),
        ({"training": {"iterations": 10.5}}, "training.iterations"),
        ({"training": {"batch_size": True}}, "training.batch_size"),
        ({"controls": {"variants": ["reinit", "shuffle"]}}, "controls.variants[1]"),
        ({"controls": {"levels": [0]}}, "controls.levels[0]"),
        ({"seeds": []}, "seeds"),
        ({"bogus": 1}, "bogus"),
        ({"training": [1, 2]}, "training"),
    ],
)
def test_bad_values_name_the_key(data, key):
    with pytest.raises(ConfigError) as err:
        check_imp_experiment(from_dict(ImpConfig, data))  # registry names included
    assert str(err.value).startswith(key + ":"), str(err.value)


def test_federated_config_checks_local_training_and_strategy_options():
    import strategies

    with pytest.raises(ConfigError, match=r"^local\.lr:"):
        experiment_from_dict({"local": {"lr": -1}})
    with pytest.raises(ConfigError, match=r"^local\.epochs:"):
        experiment_from_dict({"local": {"epochs": 0}})
    with pytest.raises(ConfigError, match=r"^strategy_options\.lotteryfl\.prune_rate:"):
        experiment_from_dict({"strategy_options": {"lotteryfl": {"prune_rate": 1.5}}})
    with pytest.raises(ConfigError, match=r"^strategy_options\.nope:"):
        experiment_from_dict({"strategy_options": {"nope": {}}})
    with pytest.raises(ConfigError, match=r"^strategies\[1\]:"):
        experiment_from_dict({"strategies": ["fedavg", "nope"]})
    with pytest.raises(ConfigError, match=r"^clients_per_round:"):
        experiment_from_dict({"clients_per_round": 50})
    with pytest.raises(ConfigError, match=r"^data\.dataset:"):
        experiment_from_dict({"data": {"dataset": "imagenet"}})
    with pytest.raises(ConfigError, match=r"^model\.name:"):
        experiment_from_dict({"model": {"name": "vgg99"}})
    cfg = experiment_from_dict({})
    assert strategies.options_for(cfg, "lotteryfl").target_density == 0.1
    with pytest.raises(ConfigError, match=r"^strategy_options\.nope:"):
        strategies.options_for(cfg, "nope")


def test_config_module_is_a_leaf_of_the_import_graph():
    """fedlottery.config imports neither the strategy registry nor the data or model packages (which import it)."""
    code = ("import sys, fedlottery.config; "
            "print(sorted(m for m in ('strategies', 'fedlottery.data', 'fedlottery.models') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    import fedlottery.data
    from fedlottery.config import ConfigError as FromConfig, PartitionConfig
    from fedlottery.errors import ConfigError as FromErrors, UserError

    assert FromConfig is FromErrors and issubclass(FromErrors, UserError) and issubclass(FromErrors, ValueError)
    assert fedlottery.data.PartitionConfig is PartitionConfig


def test_strategy_declares_it_needs_validation_data():
    import strategies
    from strategies.lotteryfl import LotteryFLOptions

    assert strategies.uses_validation(strategies.get_strategy("fedltn"), None)
    assert strategies.uses_validation(strategies.get_strategy("cell"), None)
    assert not strategies.uses_validation(strategies.get_strategy("fedavg"), None)
    lottery = strategies.get_strategy("lotteryfl")
    assert strategies.uses_validation(lottery, LotteryFLOptions())
    assert not strategies.uses_validation(lottery, LotteryFLOptions(gate_data="test80"))
    no_val = {"partition": {"val_fraction": 0}}
    experiment_from_dict({**no_val, "strategies": ["fedavg", "flash-spdst"]})  # neither reads validation data
    experiment_from_dict({**no_val, "strategies": ["lotteryfl"],
                          "strategy_options": {"lotteryfl": {"gate_data": "test80"}}})
    with pytest.raises(ConfigError, match=r"^partition\.val_fraction: .*strategies\[1\] = 'cell'"):
        experiment_from_dict({**no_val, "strategies": ["fedavg", "cell"]})


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_floats_must_be_finite(value):
    with pytest.raises(ConfigError, match=r"^local\.lr: .*not a finite number"):
        from_dict(FederatedConfig, {"local": {"lr": value}})
    with pytest.raises(ConfigError, match=r"^strategy_options\.lotteryfl\.acc_threshold: .*not a finite"):
        experiment_from_dict({"strategy_options": {"lotteryfl": {"acc_threshold": value}}})


def test_a_field_may_allow_non_finite_floats():
    import dataclasses

    from fedlottery.config import NONFINITE

    @dataclasses.dataclass
    class Limits:
        cap: float = dataclasses.field(default=1.0, metadata={NONFINITE: True})
        floor: float = 0.0

    assert from_dict(Limits, {"cap": float("inf")}).cap == float("inf")
    with pytest.raises(ConfigError, match="^floor:"):
        from_dict(Limits, {"floor": float("-inf")})


@pytest.mark.parametrize("seed", [-1, 2**32, 2**70, True, 1.5])
def test_seed_range(seed):
    with pytest.raises(ConfigError, match=r"^seed: "):
        from_dict(FederatedConfig, {"seed": seed})
    with pytest.raises(ConfigError, match=r"^seeds\[1\]: "):
        from_dict(ImpConfig, {"seeds": [0, seed]})


def test_seed_bounds_are_accepted():
    assert from_dict(FederatedConfig, {"seed": 2**32 - 1}).seed == 2**32 - 1
    assert from_dict(ImpConfig, {"seeds": [0, 2**32 - 1]}).seeds == [0, 2**32 - 1]


@pytest.mark.parametrize("data,key", [
    ({"strategies": ["fedavg", "lotteryfl", "fedavg"]}, r"strategies\[2\]: 'fedavg' is listed twice"),
    ({"simulation": {"device": "gpu"}}, r"simulation\.device: 'gpu' is not a device \(a GPU is 'cuda'\)"),
    ({"simulation": {"device": "cuda:x"}}, r"simulation\.device: "),
    ({"simulation": {"device": "cuda", "num_gpus": 0}}, r"simulation\.device: 'cuda' needs simulation\.num_gpus"),
    ({"simulation": {"ray_address": "auto"}}, r"simulation\.ray_address: 'auto' is refused"),
    ({"simulation": {"ray_address": "head"}}, r"simulation\.ray_address: 'head' is not a Ray address"),
    ({"simulation": {"actors": 3, "num_cpus": 0.5}}, r"simulation\.actors: .*whole number"),
    ({1: 2}, r"1: keys must be names"),
])
def test_federated_config_refusals(data, key):
    with pytest.raises(ConfigError, match="^" + key):
        from_dict(FederatedConfig, data)


def test_yaml_refusals(tmp_path):
    cases = {
        "empty.yaml": (b"", "is empty"),
        "comments.yaml": (b"# nothing here\n", "is empty"),
        "binary.yaml": (b"\x00\x01\x02seed: 1", "binary"),
        "latin1.yaml": ("seed: 1 # caf\u00e9".encode("latin-1"), "not UTF-8"),
        "list.yaml": (b"- 1\n- 2\n", "top level must be a mapping"),
        "dup.yaml": (b"seed: 1\nlocal:\n  lr: 0.1\n  lr: 0.2\n", "line 4: duplicate key 'lr' (first given at line 3)"),
        "syntax.yaml": (b"local: {lr: [\n", "not valid YAML at line"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(ConfigError) as err:
            load_yaml(path)
        assert message in str(err.value) and "\n" not in str(err.value), (name, str(err.value))
    with pytest.raises(ConfigError, match="is a directory"):
        load_yaml(tmp_path)
    merged = tmp_path / "merge.yaml"  # a merge key may bring in a key given again beside it
    merged.write_text("base: &b {lr: 0.1, epochs: 2}\nlocal:\n  <<: *b\n  lr: 0.2\n")
    assert load_yaml(merged)["local"] == {"lr": 0.2, "epochs": 2}


def test_shipped_federated_configs_load_with_every_check():
    for path in ("configs/default.yaml", "configs/compare_mnist.yaml", "configs/compare_cifar10.yaml",
                 "configs/lotteryfl_mnist.yaml"):
        load_experiment(path)


def test_int_accepted_for_float_and_optional_none():
    cfg = from_dict(ImpConfig, {"training": {"lr": 1}, "pruning": {"target_density": None}})
    assert cfg.training.lr == 1.0 and isinstance(cfg.training.lr, float)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_imp_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("pruning: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_imp_config(bad)


def test_command_line_settings_override_the_file_before_the_checks():
    from strategies import options_for

    cfg = load_experiment("configs/compare_cifar10.yaml", strategies=["flash-jmwst"], settings=[
        "strategy_options.flash-jmwst.personal_bn=true", "local.lr=0.2", "evaluation.finetune_epochs=0",
        "strategy_options.fedpm={}"])
    options = options_for(cfg, "flash-jmwst")
    assert options.personal_bn is True and options.density == 0.3  # the file's other options kept
    assert cfg.local.lr == 0.2 and cfg.local.epochs == 2
    assert cfg.evaluation.finetune_epochs == 0 and cfg.strategies == ["flash-jmwst"]
    empty_section = load_yaml("configs/compare_cifar10.yaml")
    empty_section["strategy_options"]["fedpm"] = None  # `fedpm:` with nothing under it, as YAML reads it
    set_dotted(empty_section, "strategy_options.fedpm.lr=0.2")
    assert empty_section["strategy_options"]["fedpm"] == {"lr": 0.2}
    with pytest.raises(ConfigError, match="personal_bn"):  # a value of the wrong type is refused by name
        load_experiment("configs/compare_cifar10.yaml", settings=["strategy_options.flash-jmwst.personal_bn=[1]"])


# ---- strategy variants and compressed uplinks ------------------------------------------------------------------
_Q8 = {"name": "fedavg", "label": "fedavg-q8", "comm": {"uplink": {"quantize": {"bits": 8}}}}


def test_variants_resolve_to_labelled_specs_and_plain_names_stay_as_they_were():
    from strategies import options_for, spec_for, strategy_specs

    cfg = experiment_from_dict({
        "strategies": ["lotteryfl", "fedavg", _Q8,
                       {"name": "lotteryfl", "label": "lotteryfl-fast", "options": {"prune_rate": 0.5}}],
        "strategy_options": {"lotteryfl": {"prune_rate": 0.3, "target_density": 0.2}},
        "comm": {"codec": "rice"}})
    specs = strategy_specs(cfg)
    assert [(s.label, s.name) for s in specs] == [("lotteryfl", "lotteryfl"), ("fedavg", "fedavg"),
                                                  ("fedavg-q8", "fedavg"), ("lotteryfl-fast", "lotteryfl")]
    assert specs[0].options.prune_rate == 0.3 and specs[0].comm.uplink.quantize is None
    fast = options_for(cfg, "lotteryfl-fast")  # the variant's options over strategy_options, key by key
    assert (fast.prune_rate, fast.target_density) == (0.5, 0.2)
    assert spec_for(cfg, "fedavg-q8").comm.uplink.quantize.bits == 8
    assert spec_for(cfg, "fedavg-q8").comm.codec == "rice"  # the run's comm, the variant's uplink over it
    assert options_for(cfg, "lotteryfl") == options_for(experiment_from_dict(
        {"strategies": ["lotteryfl"], "strategy_options": {"lotteryfl": {"prune_rate": 0.3, "target_density": 0.2}}}),
        "lotteryfl")


@pytest.mark.parametrize("strategies,match", [
    (["fedavg", {"name": "fedavg"}], r"^strategies\[1\]: 'fedavg' is listed twice \(first at strategies\[0\]\)"),
    ([_Q8, {**_Q8, "comm": {}}], r"^strategies\[1\]: 'fedavg-q8' is listed twice"),
    (["fedavg", {"name": "fedavg", "label": "a b"}], r"^strategies\[1\]\.label: 'a b' is not a label"),
    ([{"name": "fedavg", "lable": "x"}], r"^strategies\[0\]\.lable: unknown key"),
    ([{"name": "nope", "label": "x"}], r"^strategies\[0\]: unknown strategy 'nope'"),
    ([{"name": "lotteryfl", "label": "x", "options": {"prune_rate": 2}}], r"^strategies\[0\]\.options\.prune_rate:"),
    ([{"name": "fedavg", "label": "x", "comm": {"uplink": {"quantize": {"bits": 1}}}}],
     r"^strategies\[0\]\.comm\.uplink\.quantize\.bits: must be an integer in \[2, 16\]"),
    ([{"name": "fedavg", "label": "x", "comm": {"uplink": {"stc": {"fraction": 0}}}}],
     r"^strategies\[0\]\.comm\.uplink\.stc\.fraction: must be in \(0, 1\]"),
    ([{"name": "fedavg", "label": "x", "comm": {"uplink": {"stc": {}, "quantize": {}}}}],
     r"^strategies\[0\]\.comm\.uplink: set one of quantize and stc"),
    ([{"name": "fedavg", "label": "x", "comm": {"values": "float16", "uplink": {"stc": {}}}}],
     r"^strategies\[0\]\.comm\.values: float16 downlinks"),
])
def test_variant_refusals_name_the_entry(strategies, match):
    with pytest.raises(ConfigError, match=match):
        experiment_from_dict({"strategies": strategies})


def test_a_run_wide_uplink_applies_to_every_strategy():
    from strategies import strategy_specs

    cfg = experiment_from_dict({"strategies": ["fedavg", "lotteryfl"], "comm": {"uplink": {"stc": {"fraction": 0.02}}}})
    assert all(s.comm.uplink.stc.fraction == 0.02 for s in strategy_specs(cfg))


def test_command_line_strategies_pick_the_files_variants_by_label(tmp_path):
    import yaml

    path = tmp_path / "variants.yaml"
    path.write_text(yaml.safe_dump({"strategies": ["fedavg", _Q8]}))
    cfg = load_experiment(path, strategies=["fedavg-q8", "lotteryfl"])
    assert [getattr(e, "label", e) for e in cfg.strategies] == ["fedavg-q8", "lotteryfl"]
    assert cfg.strategies[0].comm == _Q8["comm"]


def test_set_takes_a_key_quoted_as_errors_print_it():
    """Errors name `strategy_options."flwr:QFedAvg".client_learning_rate` (YAML needs the quotes); --set takes
    that spelling as well as the bare one."""
    quoted, bare = {}, {}
    set_dotted(quoted, 'strategy_options."flwr:QFedAvg".client_learning_rate=0.1')
    set_dotted(bare, "strategy_options.flwr:QFedAvg.client_learning_rate=0.1")
    assert quoted == bare == {"strategy_options": {"flwr:QFedAvg": {"client_learning_rate": 0.1}}}
    with pytest.raises(ConfigError, match="dotted key"):
        set_dotted({}, 'strategy_options."flwr:QFedAvg.client_learning_rate=0.1')
