"""keys_values/precision.py: the precision a run computes in on a CPU and planned for a GPU, the bf16 probe, the
placement, and the Trainer's arguments that follow them."""


import pytest

from keys_values import config, precision
from keys_values.training import trainer


@pytest.mark.parametrize("dtype,bnb,purpose,cpu_bf16,expected", [
    ("auto", False, "train", False, ("fp32", False, "fp32")),  # bf16 not faster on this CPU: fp32
    ("auto", False, "train", True, ("bf16", True, "fp32")),  # bf16 faster: autocast over an fp32 base, as the original
    ("auto", False, "generate", True, ("fp32", False, "fp32")),  # evaluation stays fp32 on a CPU
    ("auto", False, "rank", True, ("fp32", False, "fp32")),
    ("bf16", False, "generate", False, ("bf16", False, "bf16")),  # a given dtype wins; autocast only trains
    ("bf16", False, "train", False, ("bf16", True, "fp32")),
    ("fp16", False, "rank", False, ("fp16", False, "fp16")),
    ("auto", True, "train", False, ("fp32", False, "checkpoint")),  # 4-bit from the checkpoint's own weights
    ("auto", True, "train", True, ("bf16", False, "checkpoint")),  # 4-bit computing in bf16, no autocast on a CPU
    ("fp32", True, "train", True, ("fp32", False, "checkpoint")),  # a given dtype wins with 4-bit too
])
def test_precision_on_a_cpu(dtype, bnb, purpose, cpu_bf16, expected):
    if __import__("torch").cuda.is_available():
        pytest.skip("a CPU's rules")
    p = precision.precision(dtype, bnb, purpose, bf16_cpu=cpu_bf16)
    assert (p.dtype, p.autocast, p.weights) == expected and p.bnb == bnb and not p.tf32 and p.why


@pytest.mark.parametrize("speedup,chosen", [(2.3, "bf16"), (1.0, "fp32"), (0.01, "fp32")])
def test_auto_trains_in_bf16_where_the_probe_measures_it_faster(monkeypatch, speedup, chosen):
    if __import__("torch").cuda.is_available():
        pytest.skip("a CPU's rules")
    monkeypatch.setattr(precision, "cpu_bf16_speedup", lambda shape=None, cache=True: speedup)
    p = precision.precision("auto", False, "train")
    assert p.dtype == chosen and f"{speedup}x" in p.why  # the measurement is the reason, recorded
    assert precision.precision("auto", False, "generate").dtype == "fp32"


def test_the_bf16_probe_measures_this_cpu_and_remembers(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(precision, "_probes", {})
    ratio = precision.cpu_bf16_speedup((256, 128, 384))
    assert ratio > 0
    assert (tmp_path / "kv-lora" / "bf16-probe.json").is_file()
    monkeypatch.setattr(precision, "_probes", {})  # another process on this machine: the same answer, not measured again
    monkeypatch.setattr("torch.randn", lambda *a, **k: (_ for _ in ()).throw(AssertionError("measured again")))
    assert precision.cpu_bf16_speedup((256, 128, 384)) == ratio


def test_precision_planned_for_a_gpu():
    p = precision.precision("auto", True, "train", device="gpu")
    assert (p.dtype, p.bnb, p.autocast, p.tf32) == ("bf16", True, True, True)  # the original's bf16 + tf32
    assert p.why.endswith("; fp32 matrix products in TF32")  # the plan's words say so, as its JSON does
    fp32 = precision.precision("fp32", False, "train", device="gpu")
    assert (fp32.dtype, fp32.tf32) == ("fp32", True) and "TF32" in fp32.why
    evaluation = precision.precision("auto", False, "generate", device="gpu")
    assert not evaluation.tf32 and "TF32" not in evaluation.why  # evaluation does not turn TF32 on
    assert evaluation.dtype == "bf16"


@pytest.mark.parametrize("gpus,distributed,rank,expected", [
    (0, False, 0, (None, 0, False)),
    (1, False, 0, ("auto", 1, False)),  # the original: device_map="auto"
    (4, False, 0, ("auto", 1, False)),  # split over the 4 GPUs in one process: never DataParallel
    (4, True, 3, ({"": 3}, 1, True)),  # accelerate launch: a full copy per process on its own GPU
    (0, True, 1, (None, 0, True)),
])
def test_placement(gpus, distributed, rank, expected):
    p = precision.placement(gpus, distributed, rank)
    assert (p.device_map, p.n_gpu, p.data_parallel) == expected and p.what


def test_training_arguments_follow_precision_and_placement(tmp_path):
    args = config.training_config(["--tasks", "CB", "--bnb"])
    targs = trainer.training_arguments(args, str(tmp_path), precision.precision("auto", True, "train", bf16_cpu=False),
                                     precision.placement(0, False))
    assert targs.use_cpu and targs.n_gpu == 0 and targs.optim == "adamw_torch" and not targs.bf16
    assert (targs.per_device_train_batch_size, targs.gradient_accumulation_steps) == (32, 2)  # the original's
    assert targs.lr_scheduler_type == "constant" and targs.max_grad_norm == 0.3 and targs.learning_rate == 2e-4


def test_the_bf16_probe_never_times_a_tiny_shape_nor_a_cpu_without_bf16(monkeypatch, tmp_path):
    """A tiny model's widths are raised to PROBE_MIN (a product of 64 x 160 times noise); a CPU whose flags name no
    bf16 instruction is fp32 without a probe."""
    from types import SimpleNamespace

    tiny = SimpleNamespace(hidden_size=64, intermediate_size=160)
    assert precision.probe_shape(tiny) == (1024, 256, 512)
    assert precision.probe_shape(SimpleNamespace(hidden_size=4096, intermediate_size=11008)) == (1024, 1024, 2816)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(precision, "_probes", {})
    monkeypatch.setattr(precision.environment, "cpu_flags", lambda: {"fpu", "sse2", "avx2", "fma"})
    monkeypatch.setattr("torch.randn", lambda *a, **k: (_ for _ in ()).throw(AssertionError("measured")))
    assert precision.cpu_bf16_speedup((1024, 256, 512)) == 0.0
    if not __import__("torch").cuda.is_available():
        p = precision.precision("auto", False, "train")
        assert p.dtype == "fp32" and "without bf16 instructions" in p.why
