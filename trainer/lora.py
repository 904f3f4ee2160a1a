"""What is trained: LoRA, LoRA+ (LoRA + embeddings + norms) or every weight, declared through PEFT.

PEFT owns the bookkeeping, so what is trained is what `save_pretrained` saves, what
`PeftModel.from_pretrained` restores and what `merge_and_unload` merges back:
- LoRA on the attention projections q, k, v, o (r 8, alpha 16, dropout 0 by default);
- LoRA+ adds the input embedding and every normalization layer as `modules_to_save` (full trainable
  copies). Their names are found from the model (the input-embedding module and every leaf module
  whose class name ends in "Norm"), not hard-coded to Llama. When the output head is tied to the
  input embedding (SmolLM2), `ensure_weight_tying` makes PEFT wrap both with one shared trainable copy,
  so the tie survives training, saving, reloading and merging.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llqa.errors import LlqaError

if TYPE_CHECKING:
    import torch

ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")


def norm_module_names(model: torch.nn.Module) -> list[str]:
    """Qualified names of every normalization layer (leaf modules whose class name ends in 'Norm')."""
    return [
        name
        for name, mod in model.named_modules()
        if name and not any(True for _ in mod.children()) and type(mod).__name__.endswith("Norm")
    ]


def embedding_module_name(model: torch.nn.Module) -> str:
    emb = model.get_input_embeddings()
    for name, mod in model.named_modules():
        if mod is emb:
            return name
    raise LlqaError("the model's input embedding is not one of its modules", "use --method lora")


def heads_tied(model: torch.nn.Module) -> bool:
    out = model.get_output_embeddings()
    return out is not None and out.weight is model.get_input_embeddings().weight


def lora_config(model: torch.nn.Module, r: int = 8, alpha: int = 16, dropout: float = 0.0, plus: bool = True):
    """The peft LoraConfig of `--method lora` (plus=False) or `lora+` / `longlora` (plus=True)."""
    from peft import LoraConfig

    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    targets = [t for t in ATTENTION_PROJECTIONS if t in present]
    if len(targets) != len(ATTENTION_PROJECTIONS):
        missing = sorted(set(ATTENTION_PROJECTIONS) - set(targets))
        raise LlqaError(
            f"the model has no attention projection(s) named {', '.join(missing)}",
            "LoRA targets q_proj/k_proj/v_proj/o_proj; use --method full for this architecture",
        )
    kwargs = {}
    if plus:
        kwargs["modules_to_save"] = [embedding_module_name(model), *norm_module_names(model)]
        if heads_tied(model):
            if "ensure_weight_tying" not in LoraConfig.__dataclass_fields__:
                raise LlqaError(
                    "LoRA+ on a model with tied input/output embeddings needs peft's ensure_weight_tying",
                    "pip install -U 'peft>=0.18'",
                )
            kwargs["ensure_weight_tying"] = True
    return LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
        **kwargs,
    )


def prepare_trainable(model: torch.nn.Module, method: str, r: int = 8, alpha: int = 16, dropout: float = 0.0):
    """Wrap `model` for `method` (lora, lora+, longlora: a PeftModel; full: the model itself) and make the
    trainable weights fp32 (master weights; the frozen base keeps its dtype and compute runs under autocast)."""
    import torch

    if method == "full":
        model.requires_grad_(True)
        trained = model
    else:
        from peft import get_peft_model

        cfg = lora_config(model, r, alpha, dropout, plus=method in ("lora+", "longlora"))
        trained = get_peft_model(model, cfg)
    for p in trained.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
    return trained


def trainable_names(model: torch.nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]
