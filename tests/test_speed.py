"""The trainer's speed options change how the network runs, not what it computes or stores."""
import pytest
import torch

from configs import vp_digits
from sde_diffusion.files import checkpoints
from sde_diffusion.app.config import ConfigError, build_model
from sde_diffusion.app.validation import validate_config
from sde_diffusion.training import speed
from sde_diffusion.training.speed import AutocastNetwork, grad_scaler, to_memory_format, training_network
from sde_diffusion.app.train import train


def small_image_config():
    config = vp_digits.get_config()
    config.model.nf = 32
    config.model.ch_mult = (1, 2)
    config.model.num_res_blocks = 1
    config.model.attn_resolutions = ()
    config.training.batch_size = 8
    config.training.n_iters = 4
    config.training.log_freq = 2
    config.training.eval_freq = 2
    config.training.snapshot_freq = 4
    config.training.snapshot_freq_for_preemption = 2
    config.training.snapshot_sampling = False
    config.device = "cpu"
    return config


def network_inputs(seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(4, 1, 16, 16, generator=generator), torch.rand(4, generator=generator) * 999


def test_bf16_autocast_is_close_to_fp32_and_returns_float32():
    torch.manual_seed(0)
    model = build_model(small_image_config()).eval()
    x, labels = network_inputs()
    with torch.no_grad():
        reference = model(x, labels)
        mixed = training_network(model, torch.device("cpu"), precision="bf16")(x, labels)
    assert isinstance(training_network(model, torch.device("cpu"), precision="bf16"), AutocastNetwork)
    assert mixed.dtype == torch.float32
    relative = (mixed - reference).norm() / reference.norm()
    # bf16 keeps 8 bits of mantissa (relative rounding 2^-9 per op): the network's output moves by
    # about a percent, no more, and it does move (autocast really ran in bf16).
    assert 1e-4 < relative < 5e-2


def test_channels_last_changes_layout_only():
    torch.manual_seed(0)
    model = build_model(small_image_config()).eval()
    x, labels = network_inputs()
    keys = list(model.state_dict())
    with torch.no_grad():
        reference = model(x, labels)
        network = training_network(model, torch.device("cpu"), channels_last=True)
        output = network(to_memory_format(x, True), labels)
    assert network is model and list(model.state_dict()) == keys
    conv_weights = [p for p in model.parameters() if p.ndim == 4]
    assert conv_weights and all(p.is_contiguous(memory_format=torch.channels_last) for p in conv_weights)
    torch.testing.assert_close(output, reference, rtol=1e-4, atol=1e-5)
    point_batch = torch.randn(5, 2)
    assert to_memory_format(point_batch, True) is point_batch


AMX_CPU = "processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n"
AVX512_BF16_CPU = "processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16\n"


def test_amx_is_read_from_the_cpu_flags_and_oneDNNs_isa_limit():
    assert speed.cpu_runs_bf16_on_amx(AMX_CPU, {}) is True
    assert speed.cpu_runs_bf16_on_amx(AVX512_BF16_CPU, {}) is False
    assert speed.cpu_runs_bf16_on_amx(AMX_CPU, {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}) is False
    assert speed.cpu_runs_bf16_on_amx(AMX_CPU, {"ONEDNN_MAX_CPU_ISA": "avx512_core_amx"}) is True


@pytest.mark.parametrize("amx, warned", [(False, True), (True, False), (None, False)])
def test_bf16_on_a_cpu_without_amx_says_fp32_is_faster(monkeypatch, caplog, amx, warned):
    monkeypatch.setattr(speed, "cpu_runs_bf16_on_amx", lambda: amx)
    model = build_model(small_image_config())
    with caplog.at_level("WARNING", logger=speed.__name__):
        training_network(model, torch.device("cpu"), precision="bf16")
        training_network(model, torch.device("cpu"), precision="fp32")
    assert sum("without AMX" in record.getMessage() for record in caplog.records) == int(warned)


def test_grad_scaler_is_a_pass_through_unless_fp16():
    assert not grad_scaler("fp32", torch.device("cpu")).is_enabled()
    assert not grad_scaler("bf16", torch.device("cpu")).is_enabled()


def test_training_with_bf16_and_channels_last_stores_plain_float32_weights(tmp_path):
    config = small_image_config()
    config.training.precision = "bf16"
    config.training.channels_last = True
    result = train(config, tmp_path / "mixed")
    assert result["step"] == 4 and torch.isfinite(torch.tensor(result["loss"]))
    plain = train(small_image_config(), tmp_path / "plain")
    mixed_state = checkpoints.load_checkpoint(checkpoints.snapshot_path(tmp_path / "mixed", 4))["model"]
    plain_state = checkpoints.load_checkpoint(checkpoints.snapshot_path(tmp_path / "plain", 4))["model"]
    assert list(mixed_state) == list(plain_state)
    assert all(tensor.dtype == plain_state[key].dtype for key, tensor in mixed_state.items())
    # Same seed, same data: bf16 rounding moves the weights a little, not a lot.
    moved = max((mixed_state[k].float() - plain_state[k].float()).abs().max() for k in plain_state)
    assert 0 < moved < 0.05
    assert plain["step"] == 4


@pytest.mark.parametrize("field, value, message", [
    ("precision", "fp8", "training.precision"),
    ("precision", "fp16", "fp16 autocast is for CUDA"),
])
def test_bad_precision_is_a_config_error(field, value, message):
    config = small_image_config()
    config.training[field] = value
    with pytest.raises(ConfigError, match=message):
        validate_config(config)


def test_the_gpu_benchmark_runs_on_a_cpu_with_tiny_sizes(tmp_path):
    """benchmarks/gpu.py --smoke: every part (training variants of both networks, the profile,
    sampler against forward-only throughput, loss curves) runs and reports consistent numbers,
    so the script a GPU session runs once cannot rot."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.py"
    done = subprocess.run([sys.executable, str(script), "--smoke", "--out", str(tmp_path), "--loss-steps", "3"],
                          capture_output=True, text=True, timeout=600, env={**__import__("os").environ,
                                                                            "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "gpu_smoke.json").read_text())
    training = report["training"]
    assert {row["network"] for row in training} == {"DDPM U-Net", "DDPM++"}
    assert all(row["status"] == "ok" and row["images/s"] > 0 for row in training)
    assert [row["speed-up"] for row in training if "default" in row["variant"]] == [1.0, 1.0]
    shares = [float(row["share of the step"].rstrip("%")) for row in report["profile"]]
    assert sum(shares) == pytest.approx(100, abs=0.5) and report["profile"][0]["ms per step"] > 0
    sampling = report["sampling"]
    assert sorted({(row["sampler"], row["NFE"]) for row in sampling}) == [
        ("dpm_solver++", 10), ("dpm_solver++", 20), ("heun", 9), ("heun", 19)]
    assert all(row["images/s"] > 0 and row["forward-only images/s"] > 0 for row in sampling)
    (curve,) = report["loss_curves"]
    assert curve["fp32"] == pytest.approx(curve["fastest"], rel=0.05)
    assert "GPU speed" in (tmp_path / "gpu_smoke.md").read_text()
