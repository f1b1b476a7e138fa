"""A small BERT encoder in plain torch, for fine-tuning and ONNX export (training only).

Why not a model library: kefu needs exactly one architecture (BERT: all-MiniLM-L6-v2,
bert-base-chinese and their relatives), a graph that onnxruntime can fuse, and no
model-hub code anywhere near the product. Writing the forward pass here keeps the
exported graph in the "eager" shape onnxruntime's attention fusion recognises
(separate Q/K/V MatMul+Add, scaled QK^T, additive mask, Softmax, MatMul), and lets
the loader read any BERT-family folder from disk: ``config.json`` plus
``model.safetensors`` or ``pytorch_model.bin``, with or without the ``bert.``
prefix and with old ``gamma``/``beta`` LayerNorm names.

The classifier is mean pooling over real tokens, then a linear layer. The exported
graph has two outputs: ``logits`` (intents) and ``embedding`` (the L2-normalised
pooled vector, used by the few-shot head at run time).

This module imports torch and is never imported by the runtime.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F


@dataclass
class BertConfig:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    hidden_act: str = "gelu"

    @classmethod
    def from_file(cls, path: Path) -> "BertConfig":
        raw = json.loads(path.read_text(encoding="utf-8"))
        model_type = raw.get("model_type", "bert")
        if model_type != "bert":
            raise ValueError(f"{path}: model_type is {model_type!r}; kefu trains BERT-family encoders only")
        if raw.get("hidden_act", "gelu") not in ("gelu", "gelu_new", "gelu_python"):
            raise ValueError(f"{path}: hidden_act {raw.get('hidden_act')!r} is not supported (gelu only)")
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in raw.items() if k in names})

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class SelfAttention(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.heads = cfg.num_attention_heads
        self.head_dim = cfg.hidden_size // cfg.num_attention_heads
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.value = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.dropout = nn.Dropout(cfg.attention_probs_dropout_prob)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.heads, self.head_dim).permute(0, 2, 1, 3)

    def forward(self, x: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
        q = self._split(self.query(x))
        k = self._split(self.key(x))
        v = self._split(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim)
        probs = self.dropout(F.softmax(scores + additive_mask, dim=-1))
        ctx = torch.matmul(probs, v).permute(0, 2, 1, 3).contiguous()
        return ctx.view(ctx.shape[0], ctx.shape[1], self.heads * self.head_dim)


class DenseNorm(nn.Module):
    """Projection + dropout + residual + LayerNorm (BERT's "output" blocks)."""

    def __init__(self, d_in: int, d_out: int, cfg: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(d_in, d_out)
        self.LayerNorm = nn.LayerNorm(d_out, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class Attention(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.self = SelfAttention(cfg)
        self.output = DenseNorm(cfg.hidden_size, cfg.hidden_size, cfg)

    def forward(self, x: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(x, additive_mask), x)


class Intermediate(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))


class Layer(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.attention = Attention(cfg)
        self.intermediate = Intermediate(cfg)
        self.output = DenseNorm(cfg.intermediate_size, cfg.hidden_size, cfg)

    def forward(self, x: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
        a = self.attention(x, additive_mask)
        return self.output(self.intermediate(a), a)


class Embeddings(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        # Single-segment inputs only: token type 0 everywhere, so the graph needs no
        # token_type_ids input.
        n = input_ids.shape[1]
        pos = torch.arange(n, device=input_ids.device).unsqueeze(0)
        x = self.word_embeddings(input_ids) + self.position_embeddings(pos) + self.token_type_embeddings.weight[0]
        return self.dropout(self.LayerNorm(x))


class Encoder(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(Layer(cfg) for _ in range(cfg.num_hidden_layers))


class BertClassifier(nn.Module):
    """BERT encoder + mean pooling + linear intent head.

    With ``exit_layer`` K, a second linear head reads the mean-pooled output of layer K
    (an early exit): confident messages can stop there at run time and skip the upper
    layers (see ``kefu.nlp.encoder``).
    """

    def __init__(self, cfg: BertConfig, num_labels: int, exit_layer: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        self.embeddings = Embeddings(cfg)
        self.encoder = Encoder(cfg)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)
        self.classifier = nn.Linear(cfg.hidden_size, num_labels)
        nn.init.normal_(self.classifier.weight, std=0.02)
        nn.init.zeros_(self.classifier.bias)
        self.exit_layer = 0
        if exit_layer:
            self.add_exit(exit_layer, num_labels)

    def add_exit(self, layer: int, num_labels: int) -> None:
        """A fresh early-exit head on the output of ``layer`` (1-based)."""
        self.exit_layer = layer
        self.exit_classifier = nn.Linear(self.cfg.hidden_size, num_labels)
        nn.init.normal_(self.exit_classifier.weight, std=0.02)
        nn.init.zeros_(self.exit_classifier.bias)

    @staticmethod
    def additive_mask(attention_mask: torch.Tensor) -> torch.Tensor:
        return (1.0 - attention_mask.to(torch.float32))[:, None, None, :] * -10000.0

    @staticmethod
    def mean_pool(x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        w = attention_mask.to(torch.float32).unsqueeze(-1)
        return (x * w).sum(1) / w.sum(1).clamp(min=1e-6)

    def layers(self, x: torch.Tensor, additive: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        for layer in self.encoder.layer[lo:hi]:
            x = layer(x, additive)
        return x

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.embeddings(input_ids), self.additive_mask(attention_mask), 0, len(self.encoder.layer))
        return self.mean_pool(x, attention_mask)

    def head(self, pooled: torch.Tensor):
        logits = self.classifier(self.dropout(pooled))
        embedding = pooled / pooled.norm(dim=-1, keepdim=True).clamp(min=1e-6)
        return logits, embedding

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        return self.head(self.pooled(input_ids, attention_mask))

    def forward_with_exit(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        """(final logits, exit-layer pooled vector) for training."""
        return self.forward_from(self.embeddings(input_ids), attention_mask, 0)

    def lower(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, n: int) -> torch.Tensor:
        """The output of the bottom ``n`` layers (the embeddings when 0)."""
        return self.layers(self.embeddings(input_ids), self.additive_mask(attention_mask), 0, n)

    def forward_from(self, x: torch.Tensor, attention_mask: torch.Tensor, lo: int):
        """(final logits, exit-layer pooled vector or None) from the output ``x`` of layer ``lo``.

        Training with frozen lower layers computes their output once and starts here.
        """
        add = self.additive_mask(attention_mask)
        k = self.exit_layer
        early = None
        if k:
            if k < lo:
                raise ValueError(f"exit after layer {k} lies inside the {lo} frozen layers")
            x = self.layers(x, add, lo, k)
            early = self.mean_pool(x, attention_mask)
            lo = k
        x = self.layers(x, add, lo, len(self.encoder.layer))
        logits = self.classifier(self.dropout(self.mean_pool(x, attention_mask)))
        return logits, early


class FrontPart(nn.Module):
    """Export view: embeddings and layers below the exit -> (hidden states, exit logits)."""

    def __init__(self, model: BertClassifier) -> None:
        super().__init__()
        self.m = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        m = self.m
        x = m.layers(m.embeddings(input_ids), m.additive_mask(attention_mask), 0, m.exit_layer)
        return x, m.exit_classifier(m.mean_pool(x, attention_mask))


class BackPart(nn.Module):
    """Export view: the layers above the exit and the final head -> (logits, embedding)."""

    def __init__(self, model: BertClassifier) -> None:
        super().__init__()
        self.m = model

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor):
        m = self.m
        x = m.layers(hidden, m.additive_mask(attention_mask), m.exit_layer, len(m.encoder.layer))
        return m.head(m.mean_pool(x, attention_mask))


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    st = folder / "model.safetensors"
    pt = folder / "pytorch_model.bin"
    if st.is_file():
        from safetensors.torch import load_file

        return load_file(str(st))
    if pt.is_file():
        return torch.load(str(pt), map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{folder}: no model.safetensors or pytorch_model.bin")


def _normalise_names(raw: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for name, t in raw.items():
        if name.startswith("bert."):
            name = name[5:]
        if not (name.startswith("embeddings.") or name.startswith("encoder.")):
            continue  # pooler, pre-training heads: not used
        if name.endswith("position_ids"):
            continue
        name = name.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        out[name] = t.float()
    return out


def load_base(folder: str | Path, num_labels: int) -> BertClassifier:
    """A classifier whose encoder weights come from a BERT-family folder on disk."""
    folder = Path(folder)
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{folder}: no config.json (expected a BERT-family model folder)")
    cfg = BertConfig.from_file(cfg_path)
    model = BertClassifier(cfg, num_labels)
    weights = _normalise_names(_read_weights(folder))
    own = {k for k in model.state_dict() if k.startswith(("embeddings.", "encoder."))}
    missing = sorted(own - set(weights))
    if missing:
        raise ValueError(f"{folder}: weights missing for {len(missing)} tensors, e.g. {missing[:3]}")
    model.load_state_dict(weights, strict=False)
    return model
