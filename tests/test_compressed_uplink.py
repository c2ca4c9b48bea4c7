"""Compressed uplinks (comm.uplink): the quantiser is unbiased, the bytes on the wire are what the layout says,
STC's residual is carried across rounds and through the client-state store, the server rejects forged updates,
and labelled variants of one strategy run side by side through the CLI with smaller uplinks."""
import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from flwr.app import Array, ArrayRecord, RecordDict

from fedlottery.comm import CodecError, content_bytes, pack_state, quantize, rice, stc, uplink, values_bytes
from fedlottery.comm.rice import varint_len
from fedlottery.config.federated import CommConfig, QuantizeConfig, StcConfig, UplinkConfig
from fedlottery.runs.client_state import ClientState, DirectoryStore
from fedlottery.runtime import client_app
from fedlottery.sparsity import Mask

ROOT = Path(__file__).resolve().parents[1]


def _comm(**uplink_kwargs) -> CommConfig:
    return CommConfig(uplink=UplinkConfig(**uplink_kwargs))


@pytest.mark.parametrize("scale", ["max", "l2"])
@pytest.mark.parametrize("bits", [2, 4])
def test_the_quantiser_is_unbiased(bits, scale):
    """The mean of many draws approaches the input within 5 standard errors of each entry's own variance
    (scale/s)^2 p (1 - p); a round-to-nearest quantiser misses by up to scale/(2s) and fails this."""
    x = torch.linspace(-1.0, 1.0, 41) ** 3 * 0.37 + 0.01
    g = torch.Generator().manual_seed(0)
    draws = 4000
    s = quantize.levels_of(bits)
    total = torch.zeros_like(x, dtype=torch.float64)
    for _ in range(draws):
        value, levels = quantize.quantize(x, bits, scale, g)
        total += quantize.dequantize(value, levels, bits).double()
    mean = total / draws
    r = x.double().abs() * s / value
    p = r - torch.floor(r)
    standard_error = (value / s) * torch.sqrt(p * (1 - p) / draws)
    assert torch.all((mean - x.double()).abs() <= 5 * standard_error + 1e-6), (mean - x.double()).abs().max()


def test_the_quantiser_keeps_zero_and_flags_a_diverged_update():
    g = torch.Generator().manual_seed(0)
    value, levels = quantize.quantize(torch.zeros(5), 8, "max", g)
    assert value == 0.0 and not levels.any()
    value, levels = quantize.quantize(torch.tensor([1.0, float("nan")]), 8, "max", g)
    assert math.isnan(value) and torch.isnan(quantize.dequantize(value, levels, 8)).all()


def _fixed_size(n: int, kept: int, bits: int, mask_bytes: int = 0) -> int:
    """The layout's size of a fixed-width b-bit tensor: header, mask part, quantisation header, levels, CRC."""
    return 4 + varint_len(n) + 1 + mask_bytes + 2 + 4 + (kept * bits + 7) // 8 + 4


@pytest.mark.parametrize("bits", [3, 8, 16])
def test_fixed_width_bytes_are_the_layouts_and_the_meter_counts_them(bits):
    g = torch.Generator().manual_seed(1)
    theta = {"w": torch.randn(300, 200, generator=g), "b": torch.randn(200, generator=g)}
    keep = Mask({"w": torch.ones(300, 200, dtype=torch.bool)})
    upload = {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in theta.items()}
    record, _ = uplink.pack_upload(upload, keep, keep, frozenset(), _comm(quantize=QuantizeConfig(bits, "max", "fixed")),
                                   theta, {}, g)
    assert len(record["w"].data) == _fixed_size(60000, 60000, bits)  # mask known: no mask bytes
    assert len(record["b"].data) == _fixed_size(200, 200, bits)
    analytic = _fixed_size(60000, 60000, bits) + _fixed_size(200, 200, bits)
    measured = content_bytes(RecordDict({"model": record}))
    assert abs(measured - analytic) <= 0.03 * analytic, (measured, analytic)
    dense = content_bytes(RecordDict({"model": pack_state(upload)}))
    assert measured / dense == pytest.approx(bits / 32, rel=0.03)


def test_a_sparse_strategys_update_covers_its_kept_entries_only():
    g = torch.Generator().manual_seed(2)
    theta = {"w": torch.randn(100, 50, generator=g)}
    keep = torch.rand(100, 50, generator=g) < 0.2
    mask = Mask({"w": keep})
    sent = {"w": theta["w"] * keep}
    upload = {"w": (theta["w"] + 0.1) * keep}
    record, _ = uplink.pack_upload(upload, mask, mask, frozenset(), _comm(quantize=QuantizeConfig(8, coding="fixed")),
                                   sent, {}, g)
    assert len(record["w"].data) == _fixed_size(5000, int(keep.sum()), 8)
    pruned = Mask({"w": keep & (torch.rand(100, 50, generator=g) < 0.5)})  # a pruning round: the mask is news
    record, _ = uplink.pack_upload(upload, pruned, mask, frozenset(), _comm(quantize=QuantizeConfig(8)), sent, {}, g)
    rebuilt = uplink.rebuild_record(record, sent, mask, _comm(quantize=QuantizeConfig(8)).uplink)
    from fedlottery.comm import unpack_state
    state, uploaded = unpack_state(rebuilt, theta, mask, {"w"})
    assert torch.equal(uploaded["w"], pruned["w"])
    assert torch.allclose(state["w"], upload["w"] * pruned["w"], atol=0.1 / 127 * 1.01)


def test_stc_bytes_are_header_positions_and_signs():
    g = torch.Generator().manual_seed(3)
    theta = {"w": torch.randn(400, 250, generator=g)}
    dense = Mask({"w": torch.ones(400, 250, dtype=torch.bool)})
    upload = {"w": theta["w"] + torch.randn(400, 250, generator=g)}
    record, left = uplink.pack_upload(upload, dense, dense, frozenset(), _comm(stc=StcConfig(0.01)), theta, {}, g)
    n, k = 100000, 1000
    ternary, _ = stc.compress((upload["w"] - theta["w"]).reshape(-1), None, 0.01)
    positions = rice.encoded_size(ternary.positions.numpy(), n)
    analytic = 4 + varint_len(n) + 1 + 4 + varint_len(positions) + positions + (k + 7) // 8 + 4
    assert len(record["w"].data) == analytic
    measured = content_bytes(RecordDict({"model": record}))
    assert abs(measured - analytic) <= 0.03 * analytic, (measured, analytic)
    assert values_bytes(record, {"w"}) == 4 + (k + 7) // 8  # the papers' convention: mu and the signs
    assert int((left["w"] != (upload["w"] - theta["w"])).sum()) == k  # only the sent entries left the residual


def _stc_upload(delta: torch.Tensor, residual: dict) -> tuple[torch.Tensor, dict]:
    """One client upload of `delta` through the ClientApp's packing and the server's rebuild: (what the server
    got, the residual the client keeps)."""
    sent = {"w": torch.zeros_like(delta)}
    mask = Mask({"w": torch.ones(delta.shape, dtype=torch.bool)})
    comm = _comm(stc=StcConfig(0.05))
    record, left = client_app._pack_upload({"w": delta}, mask, mask, frozenset(), comm, sent, residual, 7)
    rebuilt = uplink.rebuild_record(record, sent, mask, comm.uplink)
    from fedlottery.comm import decode_tensor
    return decode_tensor(rebuilt["w"], mask["w"])[0], left


def test_stc_residual_goes_up_with_the_next_upload_and_nothing_is_lost():
    g = torch.Generator().manual_seed(4)
    delta = torch.randn(40, 10, generator=g)
    first, residual = _stc_upload(delta, {})
    assert int((first != 0).sum()) == 20  # 5% of 400
    second, residual = _stc_upload(torch.zeros_like(delta), residual)
    assert int((second != 0).sum()) == 20  # the second upload sends what the first withheld
    assert not bool(((first != 0) & (second != 0)).any())
    # error feedback: everything sent plus what is still withheld is exactly the update
    assert torch.allclose(first + second + residual["w"], delta, atol=1e-6)


def test_stc_residual_lives_in_the_client_state_store(tmp_path):
    """A resumed run starts from the stored version: the residual saved after round 1 is the one round 2 uses."""
    g = torch.Generator().manual_seed(5)
    delta = torch.randn(40, 10, generator=g)
    _, residual = _stc_upload(delta, {})
    DirectoryStore(tmp_path).save("fedavg-stc", 2, 1, ClientState(residual=residual))
    loaded = DirectoryStore(tmp_path).load("fedavg-stc", 2, 1)  # a fresh process reads it back
    assert torch.equal(loaded.residual["w"], residual["w"])
    second, _ = _stc_upload(torch.zeros_like(delta), loaded.residual)
    assert int((second != 0).sum()) == 20
    old = ClientState()  # a version written before residuals existed reads as none
    assert ClientState.from_bytes(old.to_bytes()).residual == {}


def _record(comm: CommConfig):
    g = torch.Generator().manual_seed(6)
    sent = {"w": torch.randn(20, 20, generator=g)}
    mask = Mask({"w": torch.ones(20, 20, dtype=torch.bool)})
    record, _ = uplink.pack_upload({"w": sent["w"] + 0.5}, mask, mask, frozenset(), comm, sent, {}, g)
    return record, sent, mask


@pytest.mark.parametrize("comm", [_comm(quantize=QuantizeConfig(8)), _comm(stc=StcConfig(0.1))])
def test_the_server_rejects_forged_or_mismatched_updates(comm):
    record, sent, mask = _record(comm)
    array = record["w"]
    for i in range(len(array.data) - 4):  # every flipped byte is caught (the CRC covers all of them)
        forged = bytearray(array.data)
        forged[i] ^= 0x5A
        with pytest.raises(CodecError):
            uplink.rebuild_record(ArrayRecord({"w": Array(dtype="float32", shape=(20, 20), stype=array.stype,
                                                           data=bytes(forged))}), sent, mask, comm.uplink)
    with pytest.raises(CodecError, match="shape"):
        uplink.rebuild_record(ArrayRecord({"w": Array(dtype="float32", shape=(400,), stype=array.stype,
                                                       data=array.data)}), sent, mask, comm.uplink)
    with pytest.raises(CodecError, match="uncompressed"):
        uplink.rebuild_record(pack_state({"w": sent["w"]}), sent, mask, comm.uplink)
    other = _comm(stc=StcConfig(0.1)) if comm.uplink.quantize else _comm(quantize=QuantizeConfig(8))
    with pytest.raises(CodecError, match="the run sends"):
        uplink.rebuild_record(record, sent, mask, other.uplink)


def _tiny_config(tmp_path: Path) -> Path:
    cfg = {
        "seed": 3, "rounds": 2, "clients_per_round": 3,
        "strategies": ["fedavg",
                       {"name": "fedavg", "label": "fedavg-q8", "comm": {"uplink": {"quantize": {"bits": 8}}}},
                       {"name": "fedavg", "label": "fedavg-stc", "comm": {"uplink": {"stc": {"fraction": 0.01}}}}],
        "data": {"dataset": "digits"},
        "partition": {"scheme": "shards", "num_clients": 6, "shard_size": 30, "shards_per_client": 2,
                      "val_fraction": 0.25},
        "local": {"lr": 0.05, "epochs": 1},
        "evaluation": {"every": 2},
        "simulation": {"num_cpus": 1, "actors": 2},
    }
    path = tmp_path / "variants.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
def test_labelled_variants_run_side_by_side_with_smaller_uplinks(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}
    proc = subprocess.run([sys.executable, "-m", "fedlottery.cli", "run", str(_tiny_config(tmp_path)), "--out",
                           str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    with (out / "rounds.csv").open() as f:
        rows = list(csv.DictReader(f))
    up = {label: sum(int(r["bytes_up"]) for r in rows if r["strategy"] == label)
          for label in ("fedavg", "fedavg-q8", "fedavg-stc")}
    assert [r["strategy"] for r in rows] == ["fedavg"] * 2 + ["fedavg-q8"] * 2 + ["fedavg-stc"] * 2
    assert all(int(r["clients"]) == 3 for r in rows)  # every compressed reply passed the server's checks
    assert up["fedavg-q8"] <= 0.26 * up["fedavg"], up
    assert up["fedavg-stc"] <= 0.03 * up["fedavg"], up
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["strategies"]) == ["fedavg", "fedavg-q8", "fedavg-stc"]
    assert summary["strategies"]["fedavg-q8"]["personalized_acc_final"] is not None
    with (out / "clients.csv").open() as f:
        assert {r["strategy"] for r in csv.DictReader(f)} == set(up)
    assert {p.name for p in (out / "client_state").iterdir()} == set(up)


def _bn_upload(statistics: str):
    """An STC upload of a conv weight and a BatchNorm layer's state, as `statistics` says to send the BN
    running averages; returns (record, comm)."""
    g = torch.Generator().manual_seed(5)
    sent = {"conv.weight": torch.randn(8, 9, generator=g), "bn.running_mean": torch.randn(8, generator=g),
            "bn.running_var": torch.rand(8, generator=g) + 0.1}
    upload = {n: t + 0.3 * torch.randn(t.shape, generator=g) for n, t in sent.items()}
    upload["bn.running_var"] = upload["bn.running_var"].abs() + 0.01
    comm = _comm(stc=StcConfig(0.05), statistics=statistics)
    record, _ = uplink.pack_upload(upload, None, None, frozenset(), comm, sent, {}, g)
    return record, comm, sent, upload


def test_batchnorm_statistics_travel_exact_under_stc_by_default():
    record, comm, sent, upload = _bn_upload("exact")
    assert uplink.is_update(record["conv.weight"])
    for name in ("bn.running_mean", "bn.running_var"):
        assert not uplink.is_update(record[name]) and record[name].dtype == "float32"
    rebuilt = uplink.rebuild_record(record, sent, None, comm.uplink)
    from fedlottery.comm import decode_tensor
    assert torch.equal(decode_tensor(rebuilt["bn.running_var"], None)[0], upload["bn.running_var"])


def test_compressed_statistics_are_updates_and_a_mismatch_is_refused():
    record, comm, sent, _ = _bn_upload("compressed")
    assert uplink.is_update(record["bn.running_var"])
    with pytest.raises(CodecError, match="BatchNorm statistics exact"):
        uplink.rebuild_record(record, sent, None, _comm(stc=StcConfig(0.05)).uplink)
    exact, *_ = _bn_upload("exact")
    with pytest.raises(CodecError, match="came uncompressed"):
        uplink.rebuild_record(exact, sent, None, comm.uplink)
