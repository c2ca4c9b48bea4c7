"""Typed, validated run configuration loaded from YAML: every mistake a user can make in a config file
(unknown key, wrong type, impossible value) is caught before any work starts, and the error names the key path
(e.g. ``pruning.rate``).

Five modules: `loader` (YAML, dataclass building, `--set`), `sections` (data, model, training),
`imp` (the centralized IMP schema), `federated` (the federated schema) and `plugins` (a user's model or data set
named by import path or entry point, resolved with importlib only). The package imports nothing from
fedlottery but `fedlottery.errors`, and no FL library; checks that need the registries (strategy names and
options, data set and model names) live beside them, and `fedlottery.runtime.experiment` runs them all.
"""
from fedlottery.config.loader import SEED_MAX, NONFINITE, check_seed, from_dict, StrictLoader, load_yaml, set_dotted, to_dict, ConfigError
from fedlottery.config.sections import DataConfig, ModelConfig, TrainingConfig
from fedlottery.config.imp import PruningConfig, ControlsConfig, EarlyBirdConfig, SupermaskConfig, ImpConfig, load_imp_config
from fedlottery.config.federated import SCHEMES, TEST_MODES, PartitionConfig, LocalTrainingConfig, SimulationConfig, check_ray_address, EvaluationConfig, CommConfig, FaultsConfig, CheckpointConfig, TrackingConfig, FederatedConfig, load_federated_config

__all__ = ['SEED_MAX', 'NONFINITE', 'check_seed', 'from_dict', 'StrictLoader', 'load_yaml', 'set_dotted', 'to_dict', 'ConfigError', 'DataConfig', 'ModelConfig', 'TrainingConfig', 'PruningConfig', 'ControlsConfig', 'EarlyBirdConfig', 'SupermaskConfig', 'ImpConfig', 'load_imp_config', 'SCHEMES', 'TEST_MODES', 'PartitionConfig', 'LocalTrainingConfig', 'SimulationConfig', 'check_ray_address', 'EvaluationConfig', 'CommConfig', 'FaultsConfig', 'CheckpointConfig', 'TrackingConfig', 'FederatedConfig', 'load_federated_config']
