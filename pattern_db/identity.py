"""Model identity and fingerprint.

The backend sees only what the FX graph shows: the number of attention layers and the q/k/v
shapes. The fingerprint is therefore computed from exactly those four numbers, so a lookup
works with or without a model name::

    fingerprint(30, 9, 3, 64) == "L30-H9-KV3-D64-<8 hex digits>"

The hex suffix is the first 8 hex digits of SHA-256 over a canonical, versioned string of
the same four numbers. It carries no extra information; it lets validation catch a
fingerprint that was edited by hand so that it no longer matches the shape fields.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

FINGERPRINT_RE = re.compile(r"^L(\d+)-H(\d+)-KV(\d+)-D(\d+)-([0-9a-f]{8})$")


def fingerprint(num_layers: int, num_heads: int, num_kv_heads: int, head_dim: int) -> str:
    """Stable, deterministic fingerprint of a model's attention shape."""
    for name, v in (("num_layers", num_layers), ("num_heads", num_heads),
                    ("num_kv_heads", num_kv_heads), ("head_dim", head_dim)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"fingerprint: {name} must be a positive integer, got {v!r}")
    canon = f"mcompile-fingerprint-v1;layers={num_layers};heads={num_heads};" \
            f"kv_heads={num_kv_heads};head_dim={head_dim}"
    digest = hashlib.sha256(canon.encode("ascii")).hexdigest()[:8]
    return f"L{num_layers}-H{num_heads}-KV{num_kv_heads}-D{head_dim}-{digest}"


def _get(cfg: Any, name: str, default: Any = None) -> Any:
    if isinstance(cfg, dict):
        return cfg.get(name, default)
    return getattr(cfg, name, default)


def _text_config(cfg: Any) -> Any:
    """The decoder config of a composite (multimodal) config, else the config itself."""
    if not isinstance(cfg, dict) and hasattr(cfg, "get_text_config"):
        try:
            return cfg.get_text_config()
        except Exception:  # pragma: no cover - odd configs; fall through
            pass
    text = _get(cfg, "text_config")
    return text if text is not None else cfg


@dataclass(frozen=True)
class ModelIdentity:
    """What the database is for. Only the four shape numbers enter the fingerprint.

    ``sliding_layers``: indices of layers that use a sliding-window mask (known from a
    transformers config, or from the layer kinds of a loaded database); the default plan
    returns ``None`` for them so the backend keeps them exact.
    """

    num_layers: int
    num_heads: int            # query heads
    num_kv_heads: int
    head_dim: int
    name: str | None = None
    architecture: str | None = None
    sliding_layers: tuple[int, ...] = field(default=())
    sliding_window: int | None = None

    def __post_init__(self) -> None:
        fingerprint(self.num_layers, self.num_heads, self.num_kv_heads, self.head_dim)
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"ModelIdentity: num_heads ({self.num_heads}) must be a multiple of "
                f"num_kv_heads ({self.num_kv_heads})")
        bad = [i for i in self.sliding_layers if not 0 <= i < self.num_layers]
        if bad:
            raise ValueError(f"ModelIdentity: sliding layer indices {bad} out of range "
                             f"0..{self.num_layers - 1}")
        object.__setattr__(self, "sliding_layers", tuple(sorted(set(self.sliding_layers))))

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.num_layers, self.num_heads, self.num_kv_heads, self.head_dim)

    @property
    def shape_text(self) -> str:
        return (f"{self.num_layers} layers, {self.num_heads} q heads, "
                f"{self.num_kv_heads} kv heads, head dim {self.head_dim}")

    def describe(self) -> str:
        who = self.name or "unnamed model"
        if self.architecture:
            who += f" ({self.architecture})"
        return f"{who}, {self.shape_text}, fingerprint {self.fingerprint}"

    @classmethod
    def from_shapes(cls, num_layers: int, num_heads: int, num_kv_heads: int, head_dim: int,
                    **kw: Any) -> "ModelIdentity":
        return cls(num_layers=num_layers, num_heads=num_heads, num_kv_heads=num_kv_heads,
                   head_dim=head_dim, **kw)

    @classmethod
    def from_hf_config(cls, config: Any, name: str | None = None) -> "ModelIdentity":
        """From a transformers ``PretrainedConfig`` or a ``config.json`` dict.

        Handles composite configs (Gemma 3: ``text_config``), an absent or null ``head_dim``
        (``hidden_size // num_attention_heads``), an absent ``num_key_value_heads`` (MHA),
        and sliding layers from ``layer_types`` ("sliding_attention"), else
        ``sliding_window_pattern`` (every Nth layer full), else a non-null ``sliding_window``
        with no per-layer types (Mistral/Phi-3 style: every layer sliding).
        """
        text = _text_config(config)
        num_layers = _get(text, "num_hidden_layers")
        num_heads = _get(text, "num_attention_heads")
        if num_layers is None or num_heads is None:
            raise ValueError("config has no num_hidden_layers / num_attention_heads: "
                             "not a decoder transformers config")
        num_kv = _get(text, "num_key_value_heads") or num_heads
        head_dim = _get(text, "head_dim")
        if not head_dim:
            head_dim = _get(text, "hidden_size") // num_heads
        window = _get(text, "sliding_window")
        layer_types = _get(text, "layer_types")
        pattern = _get(text, "sliding_window_pattern")
        sliding: tuple[int, ...] = ()
        if layer_types:
            sliding = tuple(i for i, t in enumerate(layer_types[:num_layers])
                            if t == "sliding_attention")
        elif pattern and window:
            sliding = tuple(i for i in range(num_layers) if (i + 1) % int(pattern) != 0)
        elif window:
            sliding = tuple(range(num_layers))
        archs = _get(config, "architectures") or _get(text, "architectures")
        arch = archs[0] if archs else (_get(config, "model_type") or None)
        if name is None:
            name = _get(config, "_name_or_path") or _get(config, "name_or_path") or None
        return cls(num_layers=int(num_layers), num_heads=int(num_heads),
                   num_kv_heads=int(num_kv), head_dim=int(head_dim), name=name,
                   architecture=arch, sliding_layers=sliding,
                   sliding_window=int(window) if (window and sliding) else None)


def parse_model_shape(text: str) -> tuple[int, int, int, int]:
    """CLI helper: ``"30,9,3,64"`` or a fingerprint prefix ``"L30-H9-KV3-D64"`` -> numbers."""
    t = text.strip()
    m = re.match(r"^L(\d+)-H(\d+)-KV(\d+)-D(\d+)(-[0-9a-f]{8})?$", t)
    if m:
        return tuple(int(g) for g in m.groups()[:4])  # type: ignore[return-value]
    parts = [p.strip() for p in t.split(",")]
    if len(parts) == 4 and all(p.isdigit() and int(p) > 0 for p in parts):
        return tuple(int(p) for p in parts)  # type: ignore[return-value]
    raise ValueError(f"model shape {text!r}: expected LAYERS,HEADS,KV_HEADS,HEAD_DIM "
                     f"(e.g. 30,9,3,64) or L30-H9-KV3-D64")
