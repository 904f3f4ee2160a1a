"""A LongQA recipe: one TOML file saying what to build (quotas, length bounds, sources, framing, split).

Recipes ship in `longqa/recipes/` (`--recipe longqa-3k`) or come from any path (`--recipe my.toml`).
The resolved recipe is written into the manifest, so a build records exactly what made it.
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llqa.errors import LlqaError
from longqa.schema import CATEGORIES, DOC_TYPES

RECIPES_DIR = Path(__file__).parent / "recipes"


@dataclass
class Recipe:
    """What `llqa build` makes. Every field is a key of the TOML file."""

    name: str
    description: str
    # (doc_type, category) -> number of items; from [quotas.<doc_type>] tables.
    quotas: dict[str, dict[str, int]]
    # Bounds on each item's n_tokens (instruction + output, counted with `tokenizer`).
    min_tokens: int
    max_tokens: int
    max_per_doc: int  # at most this many items per document (near-duplicate documents count as one)
    test_fraction: float  # share of items in test, reached with whole documents (never split across)
    framing: dict[str, str]  # doc_type -> template with {document} and {question} ({title} for novels)
    # source name -> options (e.g. tasks = [...] for leval); a source is used iff it is listed.
    sources: dict[str, dict[str, Any]]
    tokenizer: str = "smollm2-135m"
    seed: int = 0
    path: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        where = f"recipe {self.name!r}"
        for doc_type, cells in self.quotas.items():
            if doc_type not in DOC_TYPES:
                raise LlqaError(f"{where}: unknown doc_type {doc_type!r} in [quotas]", f"use {', '.join(DOC_TYPES)}")
            for cat, n in cells.items():
                if cat not in CATEGORIES:
                    raise LlqaError(
                        f"{where}: unknown category {cat!r} in [quotas.{doc_type}]", f"use {', '.join(CATEGORIES)}"
                    )
                if not isinstance(n, int) or n < 0:
                    raise LlqaError(f"{where}: quota {doc_type}.{cat} must be a count >= 0, got {n!r}")
        if not (0 < self.min_tokens <= self.max_tokens):
            raise LlqaError(f"{where}: need 0 < min_tokens <= max_tokens, got {self.min_tokens}, {self.max_tokens}")
        if self.max_per_doc < 1:
            raise LlqaError(f"{where}: max_per_doc must be >= 1, got {self.max_per_doc}")
        if not 0.0 <= self.test_fraction < 1.0:
            raise LlqaError(f"{where}: test_fraction must be in [0, 1), got {self.test_fraction}")
        for doc_type in DOC_TYPES:
            t = self.framing.get(doc_type)
            if (
                not isinstance(t, str)
                or t.count("{document}") != 1
                or t.count("{question}") != 1
                or t.index("{question}") < t.index("{document}")
            ):
                raise LlqaError(
                    f"{where}: [framing] {doc_type} must contain {{document}} once, then {{question}} once after it"
                )
            try:
                t.format(document="", question="", title="")
            except (KeyError, IndexError, ValueError) as e:
                raise LlqaError(
                    f"{where}: [framing] {doc_type} has a bad placeholder ({e})",
                    "use only {document}, {question} and {title}; write {{ }} for braces",
                ) from None
        if not self.sources:
            raise LlqaError(f"{where}: no [sources.<name>] table", "list at least one source")

    @property
    def total(self) -> int:
        return sum(n for cells in self.quotas.values() for n in cells.values())

    def cells(self) -> list[tuple[str, str, int]]:
        """(doc_type, category, quota) in a fixed order, quotas of 0 left out."""
        return [
            (d, c, self.quotas.get(d, {}).get(c, 0))
            for d in DOC_TYPES
            for c in CATEGORIES
            if self.quotas.get(d, {}).get(c, 0) > 0
        ]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("path")
        return d


def available_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.toml"))


def load_recipe(spec: str | Path) -> Recipe:
    """A shipped recipe by name (`longqa-3k`) or a TOML file by path."""
    path = Path(spec)
    if not path.suffix and (RECIPES_DIR / f"{spec}.toml").is_file():
        path = RECIPES_DIR / f"{spec}.toml"
    if not path.is_file():
        raise LlqaError(
            f"no recipe {str(spec)!r}",
            f"use a shipped recipe ({', '.join(available_recipes())}) or a path to a .toml file",
        )
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise LlqaError(f"recipe {path} is not valid TOML ({e})", "fix the file") from None
    known = {f for f in Recipe.__dataclass_fields__ if f != "path"}
    unknown = set(raw) - known
    if unknown:
        raise LlqaError(f"recipe {path}: unknown keys {sorted(unknown)}", f"known keys: {sorted(known)}")
    raw.setdefault("name", path.stem)
    raw.setdefault("description", "")
    missing = [
        k
        for k in ("quotas", "min_tokens", "max_tokens", "max_per_doc", "test_fraction", "framing", "sources")
        if k not in raw
    ]
    if missing:
        raise LlqaError(f"recipe {path}: missing keys {missing}", "see longqa/recipes/longqa-3k.toml")
    return Recipe(**raw, path=str(path))
