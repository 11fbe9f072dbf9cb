"""Precision chosen from the hardware, and training that learns the same whatever the precision."""
import pytest
import torch
from hydra.utils import instantiate

from valharm.errors import ValharmError
from valharm.models import precision
from valharm.models.batches import Example, SupervisedDataModule, collate
from valharm.models.loading import add_lora
from valharm.models.training import fit_adapter

AVX2 = {"avx2": True, "avx512_bf16": False, "amx_bf16": False}


@pytest.fixture
def cpu(monkeypatch):
    """Pretend to run on a CPU with the given capability flags."""
    def use(**flags):
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {**AVX2, **flags})
        native = flags.get("avx512_bf16") or flags.get("amx_bf16")
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512" if native else "AVX2")
    return use


@pytest.mark.parametrize("flags, width, expected", [
    ({}, 576, "fp32"),                      # AVX2 only: bf16 would be emulated
    ({"avx512_bf16": True}, 576, "bf16"),
    ({"amx_bf16": True}, 4096, "bf16"),
    ({"amx_bf16": True}, 64, "fp32"),        # the tiny model: bf16 does not pay
])
def test_auto_on_cpu_follows_native_bf16_and_width(cpu, flags, width, expected):
    cpu(**flags)
    chosen = precision.choose("auto", "cpu", width)
    assert chosen.name == expected and chosen.device == "cpu"
    assert chosen.lightning == {"fp32": "32-true", "bf16": "bf16-mixed"}[expected]
    assert chosen.record()["reason"]


def test_kernels_capped_below_avx512_mean_no_native_bf16(monkeypatch):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": True, "amx_bf16": True})
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")  # ATEN_CPU_CAPABILITY=avx2
    assert precision.native_bf16_cpu() is None
    assert precision.choose("auto", "cpu", 4096).name == "fp32"


def test_auto_on_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert precision.choose("auto", "gpu", 64).name == "bf16"  # Lightning's accelerator name
    assert precision.choose("auto", "cuda:0", 4096).dtype == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert precision.choose("auto", "cuda", 4096).lightning == "16-mixed"


def test_explicit_choices_are_kept_and_unknown_ones_rejected(cpu):
    cpu()
    assert precision.choose("bf16", "cpu", 64).name == "bf16"  # forced, though emulated here (warned)
    assert precision.choose("fp32", "cpu", 4096).record() == {
        "precision": "fp32", "dtype": "float32", "device": "cpu", "reason": "requested"}
    with pytest.raises(ValharmError, match="precision='half' is unknown"):
        precision.choose("half", "cpu", 64)


def train_tiny(spec, name, out_dir):
    """A few LoRA steps on the tiny model in one precision; (loss before, best val loss, LoRA weights)."""
    chosen = precision.choose(name, "cpu", spec.width())
    bundle = spec.load(chosen.dtype)
    examples = [Example(f"Name a colour ({i}).", "Blue, like the sky.") for i in range(16)]
    data = SupervisedDataModule(bundle, examples[:12], examples[12:], batch_size=4, max_length=64)
    torch.manual_seed(0)
    model = add_lora(bundle.model, r=8, alpha=32, dropout=0.0, target_modules=["q_proj", "v_proj"])
    valid = collate(data.valid, bundle.tokenizer.pad_token_id)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=name == "bf16"):
        before = model(**valid).loss.item()

    def make_trainer(stage, **kwargs):
        return instantiate({"_target_": "lightning.pytorch.Trainer", "accelerator": "cpu",
                            "precision": chosen.lightning, "logger": False, "enable_checkpointing": True,
                            "enable_progress_bar": False, "enable_model_summary": False,
                            "num_sanity_val_steps": 0}, **kwargs)

    metrics = fit_adapter(model, data, out_dir, make_trainer, lr=5e-3, seed=1, epochs=3)
    assert metrics["precision"] == chosen.lightning
    lora = torch.cat([p.detach().float().flatten() for n, p in model.named_parameters() if "lora_B" in n])
    return before, metrics["best_val_loss"], lora


def test_bf16_training_learns_what_fp32_learns(tiny_spec, tmp_path):
    before32, after32, lora32 = train_tiny(tiny_spec, "fp32", tmp_path / "fp32")
    before16, after16, lora16 = train_tiny(tiny_spec, "bf16", tmp_path / "bf16")
    learned = before32 - after32
    assert learned > 1.0  # the run does learn something to compare
    assert abs(before16 - before32) < 0.02 * before32  # same starting point, up to bf16 rounding
    assert abs(after16 - after32) < 0.05 * learned  # same end point, within 5% of what was learned
    assert torch.nn.functional.cosine_similarity(lora16, lora32, dim=0) > 0.98  # the same update
