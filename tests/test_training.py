import lightning as L
import pytest
import torch
from hydra.utils import instantiate

from valharm.errors import ValharmError
from valharm.models.batches import IGNORE_INDEX, Example, SupervisedDataModule, collate, encode
from valharm.models.loading import add_lora, load_adapter
from valharm.models.training import compiled_layers, decoder_layers, fit_adapter, response_loss


def test_loss_is_on_the_response_only(tiny_bundle):
    example = Example("Say hi.", "Hello there")
    encoded = encode(tiny_bundle, example, max_length=128)
    tok = tiny_bundle.tokenizer
    prompt_len = len(tok(tiny_bundle.format_prompt("Say hi."), add_special_tokens=False)["input_ids"])
    assert encoded["labels"][:prompt_len] == [IGNORE_INDEX] * prompt_len
    assert encoded["labels"][prompt_len:] == encoded["input_ids"][prompt_len:]
    assert encoded["labels"][-1] == tok.eos_token_id
    assert tok.decode(encoded["input_ids"][prompt_len:], skip_special_tokens=True) == "Hello there"


def test_long_examples_keep_the_prompt_and_cut_the_response(tiny_bundle):
    long = Example("Say hi.", "word " * 300)
    encoded = encode(tiny_bundle, long, max_length=64)
    assert len(encoded["input_ids"]) == 64 and encoded["labels"][-1] != IGNORE_INDEX
    assert encode(tiny_bundle, Example("word " * 300, "ok"), max_length=64) is None


def test_collate_pads_right_and_masks_padding():
    batch = collate([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_training_lowers_loss_keeps_best_adapter_only_and_reloads_equal(tiny_spec, tmp_path):
    bundle = tiny_spec.load()
    examples = [Example(f"Name a colour ({i}).", "Blue.") for i in range(16)]
    data = SupervisedDataModule(bundle, examples[:12], examples[12:], batch_size=4, max_length=64)
    model = add_lora(bundle.model, r=8, alpha=32, dropout=0.0, target_modules=["q_proj", "v_proj"])

    def make_trainer(stage, **kwargs):
        return instantiate({"_target_": "lightning.pytorch.Trainer", "accelerator": "cpu",
                            "logger": False, "enable_checkpointing": True, "enable_progress_bar": False,
                            "enable_model_summary": False, "num_sanity_val_steps": 0}, **kwargs)

    valid = collate(data.valid, bundle.tokenizer.pad_token_id)
    with torch.no_grad():
        before = model(**valid).loss.item()
    metrics = fit_adapter(model, data, tmp_path / "adapter", make_trainer, lr=5e-3, seed=1, epochs=3)
    assert metrics["steps"] == 9 and metrics["epochs"] == 3 and metrics["best_val_loss"] < before - 0.5
    saved = sorted(p.name for p in (tmp_path / "adapter").iterdir())
    assert "adapter_model.safetensors" in saved and "model.safetensors" not in saved
    assert (tmp_path / "adapter" / "adapter_model.safetensors").stat().st_size < 200_000  # no frozen base

    probe = collate([data.valid[0]], bundle.tokenizer.pad_token_id)
    with torch.no_grad():
        trained = model(**probe).logits
        reloaded = load_adapter(tiny_spec.load().model, tmp_path / "adapter")(**probe).logits
        base = tiny_spec.load().model(**probe).logits
    assert torch.equal(trained, reloaded)
    assert not torch.allclose(trained, base)


class HarderLastValidation(L.Callback):
    """Validates the last epoch on answers nothing taught, so an earlier epoch is the best."""

    def __init__(self, valid: list, harder: list):
        self.valid, self.harder = valid, harder

    def on_validation_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == trainer.max_epochs - 1:
            self.valid[:] = self.harder  # the loader reads this list each epoch


def test_the_best_epochs_adapter_is_reloaded_not_the_last_epochs(tiny_spec, tmp_path):
    bundle = tiny_spec.load()
    examples = [Example(f"Name a colour ({i}).", "Blue.") for i in range(16)]
    data = SupervisedDataModule(bundle, examples[:12], examples[12:], batch_size=4, max_length=64)
    harder = [encode(bundle, Example(f"Name a colour ({i}).", "Quantum zebra xylophone."), 64) for i in range(4)]
    model = add_lora(bundle.model, r=8, alpha=32, dropout=0.0, target_modules=["q_proj", "v_proj"])

    def make_trainer(stage, callbacks, **kwargs):
        return instantiate({"_target_": "lightning.pytorch.Trainer", "accelerator": "cpu",
                            "logger": False, "enable_checkpointing": True, "enable_progress_bar": False,
                            "enable_model_summary": False, "num_sanity_val_steps": 0},
                           callbacks=[HarderLastValidation(data.valid, harder), *callbacks], **kwargs)

    metrics = fit_adapter(model, data, tmp_path / "adapter", make_trainer, lr=5e-3, seed=1, epochs=2)
    assert metrics["best_epoch"] == 0 and metrics["steps"] == 6  # two epochs ran; the first is kept
    probe = collate([encode(bundle, examples[0], 64)], bundle.tokenizer.pad_token_id)
    with torch.no_grad():
        live = model(**probe).logits
        best = load_adapter(tiny_spec.load().model, tmp_path / "adapter")(**probe).logits
        base = tiny_spec.load().model(**probe).logits
    assert torch.equal(live, best) and not torch.allclose(best, base)


class OneProcess:
    def broadcast(self, obj, src=0):
        return obj

    def barrier(self, name=None):
        pass


class FakeTrainer:
    sanity_checking = False
    is_global_zero = True
    strategy = OneProcess()

    def __init__(self):
        self.callback_metrics, self.current_epoch = {}, 0


class FakeModule:
    def __init__(self, model):
        self.model = model


def test_checkpoint_keeps_the_best_epoch_not_the_last(tiny_bundle, tmp_path):
    import copy

    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file

    from valharm.models.training import BestAdapterCheckpoint

    peft = add_lora(copy.deepcopy(tiny_bundle.model), r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"])
    checkpoint, trainer, module = BestAdapterCheckpoint(tmp_path), FakeTrainer(), FakeModule(peft)
    saved = []
    for epoch, loss in enumerate([2.0, 1.0, 1.5, 3.0]):
        with torch.no_grad():  # each epoch's weights differ
            next(p for n, p in peft.named_parameters() if "lora_B" in n).fill_(epoch)
        trainer.current_epoch = epoch
        trainer.callback_metrics = {"val_loss": torch.tensor(loss)}
        checkpoint.on_validation_end(trainer, module)
        on_disk = load_file(str(tmp_path / "adapter_model.safetensors"))
        saved.append(torch.cat([v.flatten() for k, v in sorted(on_disk.items()) if "lora_B" in k]))  # a copy
    assert checkpoint.best == 1.0 and checkpoint.best_epoch == 1
    best = {k: v.clone() for k, v in load_file(str(tmp_path / "adapter_model.safetensors")).items()}  # not mapped
    assert best.keys() == get_peft_model_state_dict(peft).keys() and torch.equal(saved[3], saved[1])
    assert not torch.equal(saved[0], saved[1])  # epoch 1 replaced epoch 0's adapter
    # resuming from the state of epoch 1 rewrites the adapter, even if a later (killed) epoch overwrote it
    state = checkpoint.state_dict()
    (tmp_path / "adapter_model.safetensors").write_bytes(b"half-written")
    resumed = BestAdapterCheckpoint(tmp_path)
    resumed.load_state_dict(state)
    resumed.on_train_start(trainer, module)
    again = load_file(str(tmp_path / "adapter_model.safetensors"))
    assert again.keys() == best.keys() and all(torch.equal(v, best[k]) for k, v in again.items())


def test_response_loss_equals_the_models_own_loss(tiny_bundle):
    from valharm.models.training import response_loss

    examples = [Example(f"Question {i}: {'why ' * i}?", f"Answer {'because ' * (3 - i % 3)}.") for i in range(6)]
    batch = collate([encode(tiny_bundle, e, 64) for e in examples], tiny_bundle.tokenizer.pad_token_id)
    with torch.no_grad():
        assert torch.allclose(response_loss(tiny_bundle.model, batch), tiny_bundle.model(**batch).loss, atol=1e-5)


def test_training_batches_group_lengths_and_reshuffle_each_epoch(tiny_bundle):
    examples = [Example("Say " + "very " * (i * 7 % 40) + "much.", "Okay.") for i in range(400)]
    data = SupervisedDataModule(tiny_bundle, examples, examples[:8], batch_size=8, max_length=128, seed=3)

    def epoch(loader):
        return [tuple(batch["input_ids"].shape) for batch in loader]

    loader = data.train_dataloader()
    first = epoch(loader)
    loader.sampler.set_epoch(1)  # as Lightning does before each epoch
    second = epoch(loader)
    assert first != second  # a new order every epoch
    loader.sampler.set_epoch(0)
    assert epoch(loader) == first  # an epoch's order depends on the seed and the epoch only (resuming repeats it)
    assert first == epoch(SupervisedDataModule(tiny_bundle, examples, examples[:8], batch_size=8,
                                               max_length=128, seed=3).train_dataloader())  # seeded
    padded = sum(rows * width for rows, width in first)
    real = sum(len(e["input_ids"]) for e in data.train)
    assert sum(rows for rows, _ in first) == 400
    assert padded < 1.1 * real  # random batches of these lengths pad about 1.5x


class Interrupted(Exception):
    pass


class StopAfterEpoch(L.Callback):
    """Ends training abruptly at the end of an epoch, before the epoch's checkpoint is written (a kill)."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            raise Interrupted


def test_an_interrupted_stage_resumes_to_the_weights_of_an_uninterrupted_one(tiny_bundle, tmp_path):
    import copy

    from hydra.utils import instantiate

    examples = [Example(f"Name a colour ({i}).", "Blue." if i % 2 else "A green one.") for i in range(24)]
    data = SupervisedDataModule(tiny_bundle, examples[:20], examples[20:], batch_size=4, max_length=64)

    def train(out_dir, stop=None):
        L.seed_everything(0, verbose=False)
        model = add_lora(copy.deepcopy(tiny_bundle.model), r=4, alpha=8, dropout=0.1, target_modules=["q_proj", "v_proj"])

        def make_trainer(stage, callbacks, **kwargs):
            return instantiate({"_target_": "lightning.pytorch.Trainer", "accelerator": "cpu", "logger": False,
                                "enable_checkpointing": True, "enable_progress_bar": False,
                                "enable_model_summary": False, "num_sanity_val_steps": 0},
                               callbacks=[*([StopAfterEpoch(stop)] if stop is not None else []), *callbacks], **kwargs)

        metrics = fit_adapter(model, data, out_dir, make_trainer, lr=5e-3, seed=1, epochs=3)
        return model, metrics

    whole_model, whole = train(tmp_path / "whole")
    with pytest.raises(Interrupted):
        train(tmp_path / "cut", stop=1)
    resumed_model, resumed = train(tmp_path / "cut")
    # stopped at the end of epoch 1 before its checkpoint (epoch 1's better adapter may be on disk already)
    assert resumed["resumed"] == "from_checkpoint" and resumed["epochs_before_resume"] == 1
    assert resumed["steps"] == whole["steps"] == 15 and resumed["best_epoch"] == whole["best_epoch"]
    assert resumed["best_val_loss"] == pytest.approx(whole["best_val_loss"], abs=1e-6)
    trained = {n: p for n, p in whole_model.named_parameters() if p.requires_grad}
    for name, weight in resumed_model.named_parameters():
        if weight.requires_grad:
            assert torch.allclose(weight, trained[name], atol=1e-6), name
    assert train(tmp_path / "cut")[1]["resumed"] == "finished"  # a finished stage is reloaded, not trained


def loss_and_lora_grads(model, batch) -> tuple[float, list[torch.Tensor]]:
    model.zero_grad()
    loss = response_loss(model, batch)
    loss.backward()
    return loss.item(), [p.grad.clone() for p in model.parameters() if p.requires_grad]


def test_packed_batches_give_the_loss_and_gradients_of_padded_ones(tiny_bundle):
    """Padding-free batches (examples back to back, positions restarting): the same loss and LoRA gradients as
    padded batches, on a fixed batch; without restarting positions attention would cross examples."""
    import torch

    from valharm.aligners.vim import build_examples
    from valharm.data.touche import load_arguments
    from valharm.models.batches import collate, collate_packed
    from valharm.models.loading import add_lora
    from valharm.values.distributions import extreme

    stage1, stage2, _ = build_examples(load_arguments(), extreme("power"), 3, 42)
    data = SupervisedDataModule(tiny_bundle, stage1[:4] + stage2[:4], stage2[:2], batch_size=8, max_length=256)
    features = data.train[:8]
    model = add_lora(tiny_bundle.model, r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"])
    try:
        (padded, grads), (packed, packed_grads) = [
            loss_and_lora_grads(model, batch)
            for batch in (collate(features, tiny_bundle.tokenizer.pad_token_id), collate_packed(features))]
        assert packed == pytest.approx(padded, rel=1e-5)
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(grads, packed_grads))
        crossing = collate_packed(features)
        crossing["position_ids"] = torch.arange(crossing["input_ids"].shape[1])[None]
        with torch.no_grad():
            assert abs(response_loss(model, crossing).item() - padded) > 1e-3
        assert not data.packing and SupervisedDataModule(tiny_bundle, stage2[:2], stage2[:2], packing=True).packing
    finally:
        model.unload()


def test_compiled_layers_give_the_loss_and_gradients_of_eager_ones_and_are_undone(tiny_spec, tmp_path):
    """`training.compile`: the same loss and LoRA gradients as eager layers on a fixed padded batch; the eager
    forwards are back afterwards, a forward set on the instance (accelerate's hooks) included; a stage trains."""
    bundle = tiny_spec.load()
    examples = [Example(f"Name a colour ({i}).", "Blue." if i % 2 else "A green one, or maybe red.") for i in range(12)]
    data = SupervisedDataModule(bundle, examples[:8], examples[8:], batch_size=8, max_length=64)
    batch = collate(data.train, bundle.tokenizer.pad_token_id)
    assert (batch["attention_mask"] == 0).any()  # padding in the batch: the masked path is compiled too
    model = add_lora(bundle.model, r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"])
    layers = decoder_layers(model)
    hooked = layers[0].forward
    layers[0].forward = hooked  # an instance attribute, as accelerate's hooks set it
    results = []
    for compiled in (False, True):
        with compiled_layers(model, compiled):
            assert all(hasattr(layer.forward, "_torchdynamo_orig_callable") == compiled for layer in layers)
            results.append(loss_and_lora_grads(model, batch))
    (eager, grads), (fused, fused_grads) = results
    assert fused == pytest.approx(eager, rel=1e-5)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(grads, fused_grads))
    assert layers[0].__dict__["forward"] is hooked and all("forward" not in layer.__dict__ for layer in layers[1:])

    def make_trainer(stage, **kwargs):
        return instantiate({"_target_": "lightning.pytorch.Trainer", "accelerator": "cpu", "logger": False,
                            "enable_checkpointing": True, "enable_progress_bar": False,
                            "enable_model_summary": False, "num_sanity_val_steps": 0}, **kwargs)

    metrics = fit_adapter(model, data, tmp_path / "stage", make_trainer, lr=5e-3, seed=1, epochs=2, compile=True)
    assert metrics["compiled"] and metrics["steps"] == 2 and metrics["best_val_loss"] < eager
    assert all("forward" not in layer.__dict__ for layer in layers[1:])


def test_compiling_a_model_without_named_layers_is_an_error():
    with pytest.raises(ValharmError, match="compile=false"):
        decoder_layers(torch.nn.Sequential(torch.nn.Linear(2, 2)))
