"""Prompts that start with BOS: [bos_id] + ids(text), not ids('<s>' + text) (Llama-2-style tokenizers)."""
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from valharm.generation.local import HFGenerator
from valharm.generation.requests import GenerationRequest
from valharm.models.batches import Example, encode
from valharm.models.loading import LoadedModel, encode_prompts, prepare_tokenizer
from valharm.prompting import Prompter, PromptStrategy
from valharm.values.distributions import extreme

WORDS = ["Hello", "world", "###", "Instruction:", "Response:", "Say", "hi."]


@pytest.fixture(scope="module")
def metaspace_tokenizer():
    """A word-level tokenizer like Llama-2's: BOS added to inputs, '▁' prepended at offset 0 only."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for word in WORDS:
        vocab.setdefault(f"▁{word}", len(vocab))
        vocab.setdefault(word, len(vocab))
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    core.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    return prepare_tokenizer(tokenizer, "plain", "metaspace")


def test_bos_text_becomes_the_bos_id_and_the_first_word_keeps_its_marker(metaspace_tokenizer):
    tok = metaspace_tokenizer
    joined = tok("<s>Hello world", add_special_tokens=False)["input_ids"]
    assert joined[1] == tok.convert_tokens_to_ids("Hello")  # what one-piece tokenising does: marker lost
    assert encode_prompts(tok, ["<s>Hello world", "Hello world"]) == [
        [1, tok.convert_tokens_to_ids("▁Hello"), tok.convert_tokens_to_ids("▁world")],
        [tok.convert_tokens_to_ids("▁Hello"), tok.convert_tokens_to_ids("▁world")]]


def test_training_and_generation_build_prompts_from_the_bos_id(metaspace_tokenizer):
    tok = metaspace_tokenizer
    config = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, bos_token_id=1, eos_token_id=2,
                         pad_token_id=2)
    torch.manual_seed(0)
    bundle = LoadedModel("metaspace", LlamaForCausalLM(config).eval(), tok, "plain")
    assert bundle.bos_text == "<s>"
    marked = tok.convert_tokens_to_ids("▁###")
    assert encode(bundle, Example("Say hi.", "Hello"), 64)["input_ids"][:2] == [1, marked]

    prompt = Prompter(bundle, PromptStrategy(), extreme("power")).raw("Hello world")
    ours = HFGenerator(progress=False).generate(bundle.model, tok, [GenerationRequest("a", prompt, 5)])
    ids = torch.tensor([[1, tok.convert_tokens_to_ids("▁Hello"), tok.convert_tokens_to_ids("▁world")]])
    expected = bundle.model.generate(input_ids=ids, max_new_tokens=5, do_sample=False, pad_token_id=2)
    assert ours[0][0] == tok.decode(expected[0, 3:], skip_special_tokens=True)
