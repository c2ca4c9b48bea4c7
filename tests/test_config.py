"""Config loading: unknown keys, wrong types and impossible values fail up front, naming the key."""
import pytest

from fedlottery.config import ConfigError, ImpConfig, from_dict, load_imp_config


def test_defaults_are_valid():
    cfg = from_dict(ImpConfig, {})
    assert cfg.data.dataset == "digits" and cfg.pruning.rate == 0.2


def test_shipped_configs_load():
    for path in ("configs/imp_digits.yaml", "configs/imp_lenet_mnist.yaml"):
        cfg = load_imp_config(path)
        assert cfg.pruning.levels > 0
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
        from_dict(ImpConfig, data)
    assert str(err.value).startswith(key + ":"), str(err.value)


def test_federated_config_checks_local_training_and_strategy_options():
    from fedlottery.config import FederatedConfig

    with pytest.raises(ConfigError, match=r"^local\.lr:"):
        from_dict(FederatedConfig, {"local": {"lr": -1}})
    with pytest.raises(ConfigError, match=r"^local\.epochs:"):
        from_dict(FederatedConfig, {"local": {"epochs": 0}})
    with pytest.raises(ConfigError, match=r"^strategy_options\.lotteryfl\.prune_rate:"):
        from_dict(FederatedConfig, {"strategy_options": {"lotteryfl": {"prune_rate": 1.5}}})
    with pytest.raises(ConfigError, match=r"^strategies\[1\]:"):
        from_dict(FederatedConfig, {"strategies": ["fedavg", "nope"]})
    with pytest.raises(ConfigError, match=r"^clients_per_round:"):
        from_dict(FederatedConfig, {"clients_per_round": 50})
    assert from_dict(FederatedConfig, {}).options_for("lotteryfl").target_density == 0.1


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
