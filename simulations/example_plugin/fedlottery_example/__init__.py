"""An example fedlottery plug-in: a small CNN (`nets`) and a synthetic data set (`data`), see docs/plugins.md."""
