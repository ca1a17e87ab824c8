"""torch modules shared by the exporter, the GPU/Neuron backends and distillation.

Imported only when one of those runs: ``import simsearch`` never imports torch.
"""

from __future__ import annotations

from typing import Any

import torch


class PooledText(torch.nn.Module):
    """A transformer followed by the pooling its sentence model was trained with.

    ``forward(input_ids, attention_mask, token_type_ids=None)`` takes int64
    tensors of shape (batch, seq) and returns the unnormalised sentence
    vectors, float of shape (batch, dim).
    """

    def __init__(self, model: Any, pooling: str, takes_token_types: bool) -> None:
        super().__init__()
        self.model = model
        self.pooling = pooling
        self.takes_token_types = takes_token_types

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        kwargs: dict[str, torch.Tensor] = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self.takes_token_types:
            kwargs["token_type_ids"] = token_type_ids if token_type_ids is not None else torch.zeros_like(input_ids)
        out = self.model(**kwargs)
        if self.pooling == "model":
            return out.text_embeds
        hidden = out.last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        if self.pooling == "max":
            return hidden.masked_fill(mask == 0, torch.finfo(hidden.dtype).min).amax(dim=1)
        # Mean over real tokens only, as sentence-transformers' Pooling does.
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


class PooledImage(torch.nn.Module):
    """A vision transformer reduced to one vector per image.

    CLIP gives its projected image embedding; other models (ViT, DINOv2...)
    give the final [CLS] token, after the model's last LayerNorm.
    ``forward(pixel_values)`` takes float32 (batch, 3, H, W) and returns
    float32 (batch, dim), unnormalised.
    """

    def __init__(self, model: Any, is_clip: bool) -> None:
        super().__init__()
        self.model = model
        self.is_clip = is_clip

    @classmethod
    def from_directory(cls, path: Any, model_type: str) -> PooledImage:
        import transformers

        kwargs = {"local_files_only": True, "attn_implementation": "eager"}
        if model_type == "clip":
            model = transformers.CLIPVisionModelWithProjection.from_pretrained(path, **kwargs)
        else:
            model = transformers.AutoModel.from_pretrained(path, **kwargs)
        return cls(model.eval(), model_type == "clip")

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=pixel_values)
        if self.is_clip:
            return out.image_embeds
        return out.last_hidden_state[:, 0]
