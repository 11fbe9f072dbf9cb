"""vanilla, icl and sft aligners; the instruction-dataset loaders on their real schemas."""
import json

import pytest
from hydra.utils import instantiate

from valharm.aligners.icl import ICLAligner, persona_prompt
from valharm.aligners.sft import SFTAligner
from valharm.aligners.vanilla import VanillaAligner
from valharm.benchmarks.pvq40 import PVQ40
from valharm.benchmarks.rtp import RealToxicityPrompts
from valharm.data.instructions import SCHEMAS, load_instructions
from valharm.errors import ValharmError
from valharm.models.loading import LoadedModel
from valharm.prompting import SAFETY, Prompter, PromptStrategy
from valharm.values.distributions import custom, extreme


def no_trainer(**kwargs):
    raise AssertionError("a Trainer was built")


@pytest.mark.parametrize("aligner", [VanillaAligner(), ICLAligner()])
def test_vanilla_and_icl_build_no_trainer_and_write_no_adapter(aligner, tiny_bundle, tmp_path):
    alignment = aligner.align(tiny_bundle, extreme("power"), None, tmp_path, no_trainer)
    assert alignment.model is tiny_bundle.model and alignment.adapter_dir is None
    assert not aligner.trains and list(tmp_path.iterdir()) == []


def test_icl_prompt_carries_every_score_and_reaches_every_benchmark(tiny_bundle):
    value = custom(vector=[1, 2, 3, 4, 5.5, 6, 1, 2, 3, 4.25])
    system = ICLAligner().align(tiny_bundle, value, None, None, no_trainer).system_prompt
    assert system == persona_prompt(value)
    for name, score in value.as_dict().items():
        assert f"- {name} (" in system and f"): {round(score, 1):g} of 6" in system
    assert "very important" in system and "not important at all" in system
    prompter = Prompter(tiny_bundle, PromptStrategy("safety", safety=True), value, system)
    for benchmark in (PVQ40(apply_strategy=True), RealToxicityPrompts(num_prompts=2, num_samples=1)):
        for request in benchmark.requests(prompter):
            assert system in request.prompt and SAFETY in request.prompt
            assert request.prompt.index(system) < request.prompt.index(SAFETY)  # persona first
    for request in PVQ40().requests(prompter):  # the questionnaire keeps the persona, not the mitigation
        assert system in request.prompt and SAFETY not in request.prompt


def test_icl_persona_sits_before_the_instruction_for_plain_models(tiny_bundle):
    plain = LoadedModel("plain", tiny_bundle.model, tiny_bundle.tokenizer, "plain")
    system = persona_prompt(extreme("tradition"))
    prompter = Prompter(plain, PromptStrategy(), extreme("tradition"), system)
    chat = prompter.chat("How are you?")
    assert chat.startswith(plain.bos_text + system + "\n\n### Instruction:\nHow are you?")
    raw = prompter.raw("The old town")
    assert raw == plain.bos_text + system + "\n\nThe old town"


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_each_instruction_sample_loads_in_its_schema(name):
    data = load_instructions(name)
    assert data.shipped_sample and len(data.examples) >= 8
    assert all(e.prompt.strip() and e.response.strip() for e in data.examples)


def test_alpaca_and_dolly_put_their_optional_field_into_the_prompt():
    alpaca = load_instructions("alpaca").examples
    assert alpaca[1].prompt == "Translate the sentence into French.\n\nThe library opens at nine."
    assert alpaca[0].prompt == "Give three tips for keeping a houseplant alive."  # empty input adds nothing
    dolly = load_instructions("dolly").examples
    assert dolly[1].prompt.endswith("\n\nContext: The town's first bridge was built in 1821 by a local carpenter "
                                    "named Elsa Brandt, using timber from the nearby forest.")


def test_grammar_reads_the_real_file_with_its_byte_order_mark(shared_data):
    assert (shared_data / "grammar_validation.csv").read_bytes()[:3] == b"\xef\xbb\xbf"
    data = load_instructions("grammar", path=str(shared_data / "grammar_validation.csv"), limit=50)
    assert len(data.examples) == 50 and not data.shipped_sample
    assert data.examples[0].prompt.startswith("Correct the grammar of this text:\n")


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet", ".csv"])
def test_local_files_in_other_formats_load(tmp_path, suffix):
    import pandas as pd

    rows = pd.DataFrame({"dialogue": ["A: hi\nB: hello", "A: bye\nB: see you"], "summary": ["They greet.", "They part."]})
    path = tmp_path / f"samsum{suffix}"
    {".jsonl": lambda: rows.to_json(path, orient="records", lines=True),
     ".parquet": lambda: rows.to_parquet(path), ".csv": lambda: rows.to_csv(path, index=False)}[suffix]()
    assert [e.response for e in load_instructions("samsum", path=str(path)).examples] == ["They greet.", "They part."]


def test_limit_counts_usable_examples_and_hub_errors_are_one_clear_error(tmp_path, monkeypatch):
    import datasets
    import pandas as pd

    path = tmp_path / "samsum.jsonl"
    pd.DataFrame({"dialogue": ["A: ?", "A: hi", "A: bye"], "summary": ["", "They greet.", "They part."]}).to_json(
        path, orient="records", lines=True)
    assert [e.response for e in load_instructions("samsum", path=str(path), limit=1).examples] == ["They greet."]

    def offline(*args, **kwargs):
        raise ConnectionError("no network")
    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(ValharmError, match="cannot load samsum dataset 'some/samsum'.*dataset.path"):
        load_instructions("samsum", hub_id="some/samsum")


def test_a_wrong_schema_names_the_missing_columns(tmp_path):
    path = tmp_path / "wrong.json"
    path.write_text(json.dumps([{"question": "q", "answer": "a"}]))
    with pytest.raises(ValharmError, match=r"missing column\(s\) instruction, input, output for the alpaca schema"):
        load_instructions("alpaca", path=str(path))
    with pytest.raises(ValharmError, match="unknown instruction dataset"):
        load_instructions("squad")


def make_trainer(stage, **kwargs):
    return instantiate({"_target_": "lightning.pytorch.Trainer", "accelerator": "cpu", "logger": False,
                        "enable_checkpointing": True, "enable_progress_bar": False, "enable_model_summary": False,
                        "num_sanity_val_steps": 0}, **kwargs)


def test_sft_accumulates_to_the_effective_batch_for_the_configured_epochs(tiny_spec, tmp_path):
    data = load_instructions("alpaca")  # 12 examples: 11 train, 1 valid
    aligner = SFTAligner(valid_fraction=0.05, training={"batch_size": 2, "effective_batch_size": 4, "epochs": 2,
                                                        "max_length": 128, "lr": 1e-3},
                         lora={"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]})
    alignment = aligner.align(tiny_spec.load(), extreme("power"), data, tmp_path, make_trainer)
    metrics = alignment.metrics["sft"]
    assert metrics["train_examples"] == 11 and metrics["valid_examples"] == 1
    assert metrics["accumulate_grad_batches"] == 2 and metrics["epochs"] == 2
    assert metrics["steps"] == 2 * 3  # 6 batches of 2 per epoch -> 3 optimizer steps of 4 examples each
    assert alignment.model_type == "sft_alpaca" and (tmp_path / "adapter" / "adapter_model.safetensors").is_file()


def test_sft_settings_are_checked():
    with pytest.raises(ValharmError, match="not a multiple of batch_size=4"):
        SFTAligner(training={"batch_size": 4, "effective_batch_size": 10})
    with pytest.raises(ValharmError, match="dataset=alpaca"):
        SFTAligner().align(None, None, {"train": None, "valid": None, "test": None}, None, make_trainer)


def test_study_settings_are_the_sft_defaults():
    from conftest import ROOT
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["aligner=sft", "dataset=dolly"])
    assert cfg.aligner.training.epochs == 1 and cfg.aligner.training.effective_batch_size == 16
    assert cfg.aligner.training.max_length == 2048 and cfg.dataset.name == "dolly"
