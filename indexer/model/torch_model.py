"""PyTorch definition of MedImageInsight, used only at export time.

Written from the architecture of the public release (see ARCHITECTURE.md) and checked
against the reference implementation (``medimageinsights==0.1.1``) in the parity tests.
Parameter names equal the release checkpoint's (``image_encoder.*``, ``lang_encoder.*``,
``image_projection``, ``lang_projection``, ``logit_scale``), so a checkpoint loads with
``strict=True``.

timm's DaViT (``davit_*_fl``, ChannelAttentionV2) computes the same function but names
its parameters differently (``stem``/``stages``/``downsample``) and carries a classifier
head, so we keep this small definition with the release's names instead of a key map.

Image tower (DaViT): four stages of a conv patch embedding followed by pairs of a
spatial (window attention) and a channel (group attention) block, each block being
``x + dwconv3x3(x)``, ``x + attn(norm(x))``, ``x + dwconv3x3(x)``, ``x + mlp(norm(x))``.
Window attention pads the feature map with zeros to a multiple of the window and does
not mask the padding (as in the reference). Channel attention scales by ``N ** -0.5``
(tokens, "dynamic scale"). Output: mean over tokens, LayerNorm.

Text tower: a pre-LN bidirectional transformer (LayerNorm eps 1e-12); padding keys are
masked, so only real tokens matter and the positional embedding is sliced to the input
length. Output: the hidden state at the EOT token (``argmax(input_ids)``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from indexer.model.config import ImageTowerConfig, ModelConfig, TextTowerConfig

# ---------------------------------------------------------------------------- image


class _DepthWiseConv(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        b, _, c = x.shape
        y: Tensor = self.dw(x.transpose(1, 2).reshape(b, c, h, w))
        return y.flatten(2).transpose(1, 2)


class _ConvResidual(nn.Module):
    """``PreNorm(None, DepthWiseConv2d)`` of the reference: ``x + dw(x)``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fn = _DepthWiseConv(dim)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        out: Tensor = self.fn(x, h, w)
        return x + out


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential()
        self.net.add_module("fc1", nn.Linear(dim, hidden))
        self.net.add_module("act", nn.GELU())
        self.net.add_module("fc2", nn.Linear(hidden, dim))

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        out: Tensor = self.net(x)
        return out


class _WindowAttention(nn.Module):
    def __init__(self, dim: int, heads: int, window: int) -> None:
        super().__init__()
        self.heads = heads
        self.window = window
        self.scale = float(dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        b, _, c = x.shape
        ws = self.window
        pad_r = (ws - w % ws) % ws
        pad_b = (ws - h % ws) % ws
        x = F.pad(x.reshape(b, h, w, c), (0, 0, 0, pad_r, 0, pad_b))
        hp, wp = h + pad_b, w + pad_r
        # partition into windows: (B * nH * nW, ws * ws, C)
        x = x.reshape(b, hp // ws, ws, wp // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
        x = x.reshape(-1, ws * ws, c)
        n = ws * ws
        qkv = self.qkv(x).reshape(-1, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)).softmax(dim=-1)
        x = self.proj((attn @ v).transpose(1, 2).reshape(-1, n, c))
        # merge windows and drop the padding
        x = x.reshape(b, hp // ws, wp // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5)
        x = x.reshape(b, hp, wp, c)[:, :h, :w, :]
        return x.reshape(b, h * w, c)


class _ChannelAttention(nn.Module):
    def __init__(self, dim: int, groups: int, dynamic_scale: bool) -> None:
        super().__init__()
        self.groups = groups
        self.dim = dim
        self.dynamic_scale = dynamic_scale
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.groups, c // self.groups).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, groups, N, group_dim)
        scale = float(n) ** -0.5 if self.dynamic_scale else float(self.dim) ** -0.5
        attn = ((q * scale).transpose(-1, -2) @ k).softmax(dim=-1)
        x = (attn @ v.transpose(-1, -2)).transpose(-1, -2)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))  # type: ignore[no-any-return]


class _NormResidual(nn.Module):
    """``PreNorm(norm, fn)`` of the reference: ``x + fn(norm(x))``."""

    def __init__(self, dim: int, fn: nn.Module) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fn = fn

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        out: Tensor = self.fn(self.norm(x), h, w)
        return x + out


class _SpatialBlock(nn.Module):
    def __init__(self, dim: int, heads: int, window: int, cfg: ImageTowerConfig) -> None:
        super().__init__()
        hidden = int(dim * cfg.mlp_ratio)
        self.conv1 = _ConvResidual(dim) if cfg.conv_at_attn else None
        self.window_attn = _NormResidual(dim, _WindowAttention(dim, heads, window))
        self.conv2 = _ConvResidual(dim) if cfg.conv_at_ffn else None
        self.ffn = _NormResidual(dim, _Mlp(dim, hidden))

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        if self.conv1 is not None:
            x = self.conv1(x, h, w)
        x = self.window_attn(x, h, w)
        if self.conv2 is not None:
            x = self.conv2(x, h, w)
        out: Tensor = self.ffn(x, h, w)
        return out


class _ChannelBlock(nn.Module):
    def __init__(self, dim: int, groups: int, cfg: ImageTowerConfig) -> None:
        super().__init__()
        hidden = int(dim * cfg.mlp_ratio)
        self.conv1 = _ConvResidual(dim) if cfg.conv_at_attn else None
        self.channel_attn = _NormResidual(dim, _ChannelAttention(dim, groups, cfg.dynamic_scale))
        self.conv2 = _ConvResidual(dim) if cfg.conv_at_ffn else None
        self.ffn = _NormResidual(dim, _Mlp(dim, hidden))

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        if self.conv1 is not None:
            x = self.conv1(x, h, w)
        x = self.channel_attn(x, h, w)
        if self.conv2 is not None:
            x = self.conv2(x, h, w)
        out: Tensor = self.ffn(x, h, w)
        return out


class _DualBlock(nn.Module):
    def __init__(self, stage: int, cfg: ImageTowerConfig) -> None:
        super().__init__()
        dim = cfg.dim_embed[stage]
        self.spatial_block = _SpatialBlock(dim, cfg.num_heads[stage], cfg.window_size, cfg)
        self.channel_block = _ChannelBlock(dim, cfg.num_groups[stage], cfg)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        out: Tensor = self.channel_block(self.spatial_block(x, h, w), h, w)
        return out


class _ConvEmbed(nn.Module):
    def __init__(self, stage: int, cfg: ImageTowerConfig) -> None:
        super().__init__()
        dim_in = 3 if stage == 0 else cfg.dim_embed[stage - 1]
        dim_out = cfg.dim_embed[stage]
        self.pre_norm = cfg.patch_prenorm[stage]
        self.proj = nn.Conv2d(
            dim_in,
            dim_out,
            kernel_size=cfg.patch_size[stage],
            stride=cfg.patch_stride[stage],
            padding=cfg.patch_padding[stage],
        )
        self.norm = nn.LayerNorm(dim_in if self.pre_norm else dim_out)

    def forward(self, x: Tensor, h: int, w: int) -> tuple[Tensor, int, int]:
        if x.dim() == 3:  # tokens from the previous stage
            if self.pre_norm:
                x = self.norm(x)
            b, _, c = x.shape
            x = x.transpose(1, 2).reshape(b, c, h, w)
        x = self.proj(x)
        h, w = int(x.shape[2]), int(x.shape[3])
        x = x.flatten(2).transpose(1, 2)
        if not self.pre_norm:
            x = self.norm(x)
        return x, h, w


class DaViT(nn.Module):
    """The image tower; ``forward`` returns the pooled, normalised features."""

    def __init__(self, cfg: ImageTowerConfig) -> None:
        super().__init__()
        stages = range(len(cfg.depths))
        self.convs = nn.ModuleList([_ConvEmbed(i, cfg) for i in stages])
        self.blocks = nn.ModuleList(
            [nn.ModuleList([_DualBlock(i, cfg) for _ in range(cfg.depths[i])]) for i in stages]
        )
        self.norms = nn.LayerNorm(cfg.dim_out)

    def forward(self, x: Tensor) -> Tensor:
        h, w = int(x.shape[2]), int(x.shape[3])
        for conv, stage in zip(self.convs, self.blocks, strict=True):
            x, h, w = conv(x, h, w)
            assert isinstance(stage, nn.ModuleList)
            for block in stage:
                x = block(x, h, w)
        out: Tensor = self.norms(x.mean(dim=1))
        return out


# ----------------------------------------------------------------------------- text


class _ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        # ``attn`` keeps nn.MultiheadAttention's parameter names (in_proj_*, out_proj.*);
        # the forward below computes it explicitly so the ONNX graph is plain MatMul/Softmax.
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width, eps=1e-12)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(width, width * 4))
        self.mlp.add_module("gelu", _QuickGELU())
        self.mlp.add_module("c_proj", nn.Linear(width * 4, width))
        self.ln_2 = nn.LayerNorm(width, eps=1e-12)
        self.heads = heads

    def _attention(self, x: Tensor, bias: Tensor) -> Tensor:
        b, n, c = x.shape
        hd = c // self.heads
        qkv = F.linear(x, self.attn.in_proj_weight, self.attn.in_proj_bias)
        qkv = qkv.reshape(b, n, 3, self.heads, hd).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * (float(hd) ** -0.5), qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1) + bias).softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(b, n, c)
        return self.attn.out_proj(out)  # type: ignore[no-any-return]

    def forward(self, x: Tensor, bias: Tensor) -> Tensor:
        x = x + self._attention(self.ln_1(x), bias)
        out: Tensor = x + self.mlp(self.ln_2(x))
        return out


class _QuickGELU(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class TextTransformer(nn.Module):
    """The text tower; ``forward`` returns the final hidden state at the EOT token."""

    def __init__(self, cfg: TextTowerConfig) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.positional_embedding = nn.Parameter(torch.zeros(cfg.context_length, cfg.width))
        self.resblocks = nn.ModuleList(
            [_ResidualAttentionBlock(cfg.width, cfg.heads) for _ in range(cfg.layers)]
        )
        self.ln_final = nn.LayerNorm(cfg.width, eps=1e-12)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        n = input_ids.shape[1]
        x = self.token_embedding(input_ids) + self.positional_embedding[:n]
        # additive key-padding bias, (B, 1, 1, N): padded keys get -inf
        pad = (attention_mask == 0)[:, None, None, :]
        bias = torch.zeros(pad.shape, dtype=x.dtype).masked_fill(pad, float("-inf"))
        for block in self.resblocks:
            x = block(x, bias)
        eot = input_ids.argmax(dim=-1)
        pooled = x[torch.arange(x.shape[0]), eot]
        out: Tensor = self.ln_final(pooled)  # per-token LayerNorm commutes with the gather
        return out


# ---------------------------------------------------------------------------- model


class MedImageInsight(nn.Module):
    """Both towers with their projections, named as in the release checkpoint."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.image_encoder = DaViT(cfg.image)
        self.lang_encoder = TextTransformer(cfg.text)
        self.image_projection = nn.Parameter(torch.zeros(cfg.image.dim_out, cfg.dim_projection))
        self.lang_projection = nn.Parameter(torch.zeros(cfg.text.width, cfg.dim_projection))
        self.logit_scale = nn.Parameter(torch.ones([]))

    def encode_image(self, pixel_values: Tensor) -> Tensor:
        x = self.image_encoder(pixel_values) @ self.image_projection
        return x / x.norm(dim=-1, keepdim=True)  # type: ignore[no-any-return]

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        x = self.lang_encoder(input_ids, attention_mask) @ self.lang_projection
        return x / x.norm(dim=-1, keepdim=True)  # type: ignore[no-any-return]


class ImageEncoderGraph(nn.Module):
    """What ``image_encoder.onnx`` computes: ``pixel_values -> image_embeds``."""

    def __init__(self, model: MedImageInsight) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: Tensor) -> Tensor:
        return self.model.encode_image(pixel_values)


class TextEncoderGraph(nn.Module):
    """What ``text_encoder.onnx`` computes: ``(input_ids, attention_mask) -> text_embeds``."""

    def __init__(self, model: MedImageInsight) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.model.encode_text(input_ids, attention_mask)
