"""Context extension: every RoPE method as a pure function `(original, ctx) -> Rope`, in one registry.

Terms
- **original**: a model's RoPE before any context extension — its `rope_parameters` without scaling
  (`rope_theta`, `partial_rotary_factor`, ...), the context it was trained for, its rotary dimension, and the
  shape fields a checkpoint's own scaling carries (`low_freq_factor`, `beta_fast`, ...).
- **Rope**: what a model runs with: the method, transformers' `rope_parameters` (parameter names as in
  `transformers.modeling_rope_utils`), the `max_position_embeddings` the config must hold, the context it
  serves and the original it was derived from.

Methods (s = target ctx / original ctx; d = rotary dimension; θ = the original `rope_theta`, always kept)
- `pi`: Position Interpolation, `linear` with `factor` s.
- `yarn`: YaRN (NTK-by-parts + attention temperature 0.1 ln s + 1), `yarn` with `factor` s and
  `original_max_position_embeddings`; `beta_fast`/`beta_slow`/`mscale`/... of a YaRN checkpoint are kept.
- `dynamic`: dynamic NTK, `dynamic` with `factor` s; transformers reads the original context from
  `max_position_embeddings`, so the config keeps the original there and θ grows with each forward
  pass's length (inference only: a model trained with it would see other frequencies at every length).
- `theta`: ABF, raise `rope_theta` to θ · s^(d/(d-2)) (NTK-aware scaling: the base dynamic NTK picks at
  the target length), or to an explicit `--rope-theta`; `rope_type` stays `default`.
- `llama3`: Llama 3.1's frequency-band scaling; `factor` = k · s with the checkpoint's own k
  (Llama-3.1: factor 8 for 16× context, k = 0.5; 1 when applied to a model without it).

Composition. A checkpoint that already carries a scaling is extended by re-deriving *its* method from its
original to the new target — never by stacking a second scaling on the first, and never with another
method (refused, naming both). For `linear` this is today's rule (the factor multiplies); for every
method, 8k→16k→32k equals 8k→32k. `longrope` and per-layer RoPE are refused.

The original context comes from evidence, in this order: `original_max_position_embeddings` in the
checkpoint's RoPE parameters; llqa's own record of a run or merged model; the method's definition
(`default`, `dynamic`: `max_position_embeddings`); `--rope-original-ctx`. A `linear` checkpoint with
none of these is ambiguous — llqa's and transformers' merged models store the extended context in
`max_position_embeddings`, LongLoRA's published checkpoints keep the original (4096 beside ×8) — and
extending it is refused with a line asking for `--rope-original-ctx`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

from llqa.errors import LlqaError

if TYPE_CHECKING:
    import torch
    from transformers import PretrainedConfig

# Fields that define a scaling and are re-derived for a new target (never carried over).
SCALING_FIELDS = ("factor", "original_max_position_embeddings", "attention_factor")
# Fields of a checkpoint's scaling that shape its method and are kept when re-deriving it.
SHAPE_FIELDS = ("low_freq_factor", "high_freq_factor", "beta_fast", "beta_slow", "mscale", "mscale_all_dim", "truncate")
METHOD_OF_TYPE = {"default": "none", "linear": "pi", "yarn": "yarn", "dynamic": "dynamic", "llama3": "llama3"}


@dataclass(frozen=True)
class Original:
    """A model's RoPE before context extension (see the module doc)."""

    params: dict[str, Any]  # rope_parameters without scaling: rope_type "default", rope_theta, ...
    ctx: int  # the context it was trained for
    rotary_dim: int
    shape: dict[str, Any] = field(default_factory=dict)  # SHAPE_FIELDS of the checkpoint's scaling
    factor_per_scale: float = 1.0  # llama3's k: the checkpoint's factor / its context ratio

    @property
    def theta(self) -> float:
        return float(self.params["rope_theta"])


@dataclass(frozen=True)
class Rope:
    """The RoPE a model runs with."""

    method: str  # none | pi | yarn | dynamic | theta | llama3
    params: dict[str, Any]  # transformers rope_parameters
    max_position_embeddings: int  # what config.max_position_embeddings holds
    ctx: int  # the context this RoPE serves
    original: Original
    ambiguous: tuple[int, ...] = ()  # linear without evidence: the candidate original contexts

    @property
    def factor(self) -> float:
        return float(self.params.get("factor", 1.0))

    @property
    def theta(self) -> float:
        return float(self.params["rope_theta"])

    def label(self) -> str:
        """How reports name it: `yarn ×4`, `theta θ=1.2e+06`, `llama3 ×8`; empty for none."""
        if self.method == "none":
            return ""
        if self.method == "theta":
            return f"theta θ={self.theta:.3g}"
        return f"{self.method} ×{self.factor:g}"

    def record(self) -> dict[str, Any]:
        """What llqa writes into a run's / merged model's llqa_model.json, so the original is never lost."""
        return {
            "method": self.method,
            "ctx": self.ctx,
            "params": self.params,
            "max_position_embeddings": self.max_position_embeddings,
            "original": {
                "params": self.original.params,
                "ctx": self.original.ctx,
                "rotary_dim": self.original.rotary_dim,
                "shape": self.original.shape,
                "factor_per_scale": self.original.factor_per_scale,
            },
        }


# --------------------------------------------------------------------------- the methods


def _scale(original: Original, ctx: int) -> float:
    return ctx / original.ctx


def pi(original: Original, ctx: int) -> Rope:
    params = {**original.params, "rope_type": "linear", "factor": _scale(original, ctx)}
    return Rope("pi", params, ctx, ctx, original)


def yarn(original: Original, ctx: int) -> Rope:
    params = {
        **original.params,
        **original.shape,
        "rope_type": "yarn",
        "factor": _scale(original, ctx),
        "original_max_position_embeddings": original.ctx,
    }
    return Rope("yarn", params, ctx, ctx, original)


def dynamic(original: Original, ctx: int) -> Rope:
    params = {**original.params, "rope_type": "dynamic", "factor": _scale(original, ctx)}
    return Rope("dynamic", params, original.ctx, ctx, original)


def theta(original: Original, ctx: int) -> Rope:
    d = original.rotary_dim
    params = {**original.params, "rope_theta": original.theta * _scale(original, ctx) ** (d / (d - 2))}
    return Rope("theta", params, ctx, ctx, original)


def llama3(original: Original, ctx: int) -> Rope:
    params = {
        **original.params,
        "low_freq_factor": 1.0,  # Llama 3.1's values, for a model that carries none
        "high_freq_factor": 4.0,
        **original.shape,
        "rope_type": "llama3",
        "factor": original.factor_per_scale * _scale(original, ctx),
        "original_max_position_embeddings": original.ctx,
    }
    return Rope("llama3", params, ctx, ctx, original)


@dataclass(frozen=True)
class Method:
    derive: Callable[[Original, int], Rope]
    trainable: bool
    about: str


METHODS: dict[str, Method] = {
    "pi": Method(pi, True, "Position Interpolation: linear, factor s"),
    "yarn": Method(yarn, True, "YaRN: NTK-by-parts + attention temperature, factor s"),
    "dynamic": Method(dynamic, False, "dynamic NTK: θ grows with each forward pass's length (inference only)"),
    "theta": Method(theta, True, "ABF: rope_theta × s^(d/(d-2)), or --rope-theta"),
    "llama3": Method(llama3, True, "Llama 3.1 frequency bands, factor k·s"),
}
DEFAULT_METHOD = "pi"


# --------------------------------------------------------------------------- reading a checkpoint


def rotary_dim(config: PretrainedConfig) -> int:
    """Dimensions RoPE rotates per head, as transformers computes them."""
    text = getattr(config, "text_config", config)
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    params = getattr(text, "rope_parameters", None) or {}
    partial = params.get("partial_rotary_factor", getattr(text, "partial_rotary_factor", None) or 1.0)
    return int(head_dim * partial)


def _clean(value: float) -> int:
    """An original context computed as a ratio: an exact integer where the float is one up to rounding."""
    near = round(value)
    if near < 1 or abs(value - near) > 1e-6 * max(1.0, value):
        raise LlqaError(
            f"the checkpoint's RoPE implies an original context of {value:g} tokens, not a whole number",
            "pass --rope-original-ctx N with the context the model was pretrained at",
        )
    return near


def read(
    params: dict[str, Any] | None,
    max_position_embeddings: int,
    dim: int,
    record: dict[str, Any] | None = None,
    original_ctx: int | None = None,
) -> Rope:
    """The RoPE a checkpoint carries, with its original decided from evidence (see the module doc).

    `record`: llqa_model.json of a run or merged model ({} or None for other checkpoints);
    `original_ctx`: the user's `--rope-original-ctx`."""
    params = dict(params or {})
    record = record or {}
    if params and all(isinstance(v, dict) for v in params.values()):
        raise LlqaError(
            "this model uses per-layer RoPE parameters (e.g. Gemma-3's local and global layers), which llqa "
            "cannot rescale",
            "run it at its native context (omit --ctx and --rope)",
        )
    raw = dict(params)  # what the model runs with, returned as it is when nothing changes
    rope_type = params.get("rope_type", params.get("type", "default"))
    params.pop("type", None)
    params["rope_type"] = rope_type
    params.setdefault("rope_theta", 10000.0)  # transformers' default_theta, what a config without one runs with
    raw.setdefault("rope_theta", params["rope_theta"])
    if rope_type not in METHOD_OF_TYPE:
        raise LlqaError(
            f"the checkpoint uses '{rope_type}' RoPE scaling, which llqa does not rescale",
            "run it at its own context (omit --ctx and --rope)",
        )
    if "rope" in record:
        return _from_record(record["rope"])
    base = {k: v for k, v in params.items() if k not in SCALING_FIELDS + SHAPE_FIELDS}
    base["rope_type"] = "default"
    shape = {k: params[k] for k in SHAPE_FIELDS if k in params}
    factor = float(params.get("factor") or 1.0)
    method = METHOD_OF_TYPE[rope_type]
    explicit = params.get("original_max_position_embeddings")
    if original_ctx is not None and explicit is not None and int(explicit) != original_ctx:
        raise LlqaError(
            f"--rope-original-ctx {original_ctx} contradicts the checkpoint's original_max_position_embeddings "
            f"{explicit}",
            "drop --rope-original-ctx",
        )
    if method == "none":
        orig = Original(base, _given(original_ctx, max_position_embeddings), dim)
        return Rope("none", raw, max_position_embeddings, max_position_embeddings, orig)
    if method == "dynamic":
        orig = Original(base, max_position_embeddings, dim)
        return Rope("dynamic", raw, max_position_embeddings, round(max_position_embeddings * factor), orig)
    if method == "yarn":
        ctx0 = int(explicit or max_position_embeddings)
        return Rope("yarn", raw, max_position_embeddings, round(ctx0 * factor), Original(base, ctx0, dim, shape))
    if method == "llama3":
        ctx0 = int(explicit or max_position_embeddings)
        k = factor * ctx0 / max_position_embeddings
        return Rope(
            "llama3", raw, max_position_embeddings, max_position_embeddings, Original(base, ctx0, dim, shape, k)
        )
    return _read_linear(raw, base, factor, max_position_embeddings, dim, record, explicit or original_ctx)


def _given(original_ctx: int | None, max_position_embeddings: int) -> int:
    """A checkpoint without scaling was pretrained at its max_position_embeddings unless the user knows a
    shorter context (Qwen3: 40,960 positions, pretrained at 32,768 per its model card)."""
    if original_ctx is None:
        return max_position_embeddings
    if original_ctx > max_position_embeddings:
        raise LlqaError(
            f"--rope-original-ctx {original_ctx} is longer than the {max_position_embeddings} positions this "
            "checkpoint serves without RoPE scaling",
            f"pass --rope-original-ctx {max_position_embeddings} or less",
        )
    return original_ctx


def _read_linear(params, base, factor, max_pos, dim, record, original_ctx) -> Rope:
    """A `linear` checkpoint: original from evidence; without any, both conventions stay possible."""
    if original_ctx is not None:
        ctx0 = int(original_ctx)
    elif record.get("ctx") == max_pos:  # an llqa run/merged model before records carried "rope"
        ctx0 = _clean(max_pos / factor)
    elif factor == 1.0:
        ctx0 = max_pos
    else:
        extended = max_pos / factor
        candidates = (max_pos, round(extended)) if extended == round(extended) else (max_pos,)
        orig = Original(base, max_pos, dim)
        return Rope("pi", params, max_pos, max_pos, orig, ambiguous=candidates)
    return Rope("pi", params, max_pos, _clean(ctx0 * factor), Original(base, ctx0, dim))


def _from_record(rec: dict[str, Any]) -> Rope:
    try:
        o = rec["original"]
        orig = Original(
            dict(o["params"]),
            int(o["ctx"]),
            int(o["rotary_dim"]),
            dict(o.get("shape", {})),
            float(o["factor_per_scale"]),
        )
        return Rope(rec["method"], dict(rec["params"]), int(rec["max_position_embeddings"]), int(rec["ctx"]), orig)
    except (KeyError, TypeError, ValueError) as e:
        raise LlqaError(f"llqa_model.json has a malformed 'rope' record ({e})", "restore it from the run") from None


# --------------------------------------------------------------------------- extending


def default_method(current: Rope) -> str:
    """The method `--rope` defaults to: the one the model carries, else Position Interpolation."""
    return DEFAULT_METHOD if current.method == "none" else current.method


def extend(current: Rope, ctx: int | None, method: str | None = None, rope_theta: float | None = None) -> Rope:
    """`current` set up for context `ctx` by `method` (default: `default_method`), re-derived from its original.

    `ctx` at or below the context `current` serves leaves it as it is (so does `ctx` None), unless
    `--rope-theta` asks for a θ explicitly."""
    if ctx is not None and ctx <= 0:
        raise LlqaError(f"--ctx must be a positive number of tokens, got {ctx}", "e.g. --ctx 32768")
    if method is not None and method not in METHODS:
        raise LlqaError(f"--rope {method} is not a method llqa knows", f"use one of: {', '.join(METHODS)}")
    method = method or default_method(current)
    if rope_theta is not None:
        if method != "theta":
            raise LlqaError(f"--rope-theta sets θ for --rope theta, not --rope {method}", "add --rope theta")
        if not (math.isfinite(rope_theta) and rope_theta > 0):
            raise LlqaError(f"--rope-theta must be a positive number, got {rope_theta:g}", "e.g. --rope-theta 1e6")
    if (ctx is None or ctx <= current.ctx) and rope_theta is None:
        return current
    if current.method not in ("none", method):
        raise LlqaError(
            f"the model carries {current.method} RoPE ({current.label()} from {current.original.ctx}); --rope "
            f"{method} would stack a second method on it",
            f"use --rope {current.method} (re-derived from its original {current.original.ctx}-token context)",
        )
    if current.ambiguous:
        a, b = current.ambiguous[0], current.ambiguous[-1]
        raise LlqaError(
            f"the checkpoint carries linear RoPE ×{current.factor:g} beside max_position_embeddings {a}, and nothing "
            f"says whether it was pretrained at {a} (LongLoRA's convention: it now serves {a * current.factor:g}) "
            f"or at {b} (llqa's and transformers' merged models: it serves {a})",
            f"pass --rope-original-ctx {a} or --rope-original-ctx {b}",
        )
    target = ctx if ctx is not None else current.ctx
    rope = METHODS[method].derive(current.original, max(target, current.original.ctx))
    if rope_theta is not None:
        rope = replace(rope, params={**rope.params, "rope_theta": float(rope_theta)})
    return rope


def check_trainable(method: str | None) -> None:
    if method is not None and method in METHODS and not METHODS[method].trainable:
        raise LlqaError(
            f"--rope {method} cannot be trained: it rescales RoPE by the length of each forward pass, so the "
            "trained model would see other frequencies at every evaluation length",
            "train with --rope pi, yarn or theta (and evaluate with --rope dynamic on an untrained model)",
        )


def to_dict(rope: Rope) -> dict[str, Any]:
    return asdict(rope)


# --------------------------------------------------------------------------- what a user sees


def inv_freq(config: PretrainedConfig, seq_len: int | None = None) -> tuple[torch.Tensor, float]:
    """(inverse frequencies, attention scaling) transformers computes for `config` at `seq_len` (dynamic)."""
    import torch
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    params = config.rope_parameters
    rope_type = params.get("rope_type", "default")
    if rope_type == "default":
        d = rotary_dim(config)
        return 1.0 / (params["rope_theta"] ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d)), 1.0
    return ROPE_INIT_FUNCTIONS[rope_type](config, "cpu", seq_len=seq_len)


def wavelengths(config: PretrainedConfig, seq_len: int | None = None) -> tuple[float, float]:
    """(shortest, longest) RoPE wavelength in tokens, 2π / inverse frequency."""
    freq, _ = inv_freq(config, seq_len)
    waves = 2 * math.pi / freq.double()
    return float(waves.min()), float(waves.max())
