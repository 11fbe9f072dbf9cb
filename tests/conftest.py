"""Shared test setup: single-threaded torch, offline everything, real data from ../shared/data."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("VALHARM_SHARED_DATA", ROOT.parent / "shared" / "data"))

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("VALHARM_CACHE_DIR", str(ROOT / ".cache" / "valharm"))
os.environ.update(WANDB_MODE="offline", WANDB_SILENT="true", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")


@pytest.fixture(autouse=True)
def python_ctrl_c():
    """Python's Ctrl-C handler in every test, and so SIGINT's default in the processes tests start: a shell that
    runs the suite in the background (`make test &`, a CI step under nohup) hands it SIGINT ignored, where Python
    installs no handler and the Ctrl-C tests could not interrupt anything."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data directory; missing data fails under CI=true and skips elsewhere."""
    if not (SHARED_DATA / "README.md").is_file():
        message = f"real data not found at {SHARED_DATA} (set VALHARM_SHARED_DATA)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return SHARED_DATA


def run_cli(*args: str, cwd: Path, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run `python -m <args>` as a user would, capturing output."""
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


@pytest.fixture(scope="session")
def tiny_spec():
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["model=tiny"])
    return instantiate(cfg.model)


@pytest.fixture(scope="session")
def tiny_bundle(tiny_spec):
    return tiny_spec.load()


@pytest.fixture(scope="session")
def tiny_classifier(tmp_path_factory, tiny_bundle):
    """A randomly initialised Llama sequence classifier with regard labels, saved like a hub checkpoint."""
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    tok = tiny_bundle.tokenizer
    labels = ["LABEL_NEG", "neutral", "positive", "other"]
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, pad_token_id=tok.pad_token_id,
                         id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)})
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(config)
    folder = tmp_path_factory.mktemp("classifier")
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
