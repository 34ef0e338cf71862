"""A small pre-LayerNorm causal transformer whose training loss is objx.linear_prob_loss: the
final hidden states and the LM-head weight go in, the [N, V] logits are never built."""

import torch
import torch.nn as nn
import torch.nn.functional as F

import objx


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.attn_norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.mlp_norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.attn_norm(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.out(a.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.mlp_norm(x))


class TinyCausalLM(nn.Module):
    def __init__(self, vocab: int, max_len: int, dim: int = 96, layers: int = 2, heads: int = 4):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.position = nn.Embedding(max_len, dim)
        self.blocks = nn.ModuleList(_Block(dim, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)

    def hidden(self, input_ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(input_ids) + self.position.weight[: input_ids.shape[1]]
        for block in self.blocks:
            h = block(h)
        return self.norm(h)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Logits, for evaluation only; training goes through loss()."""
        return self.lm_head(self.hidden(input_ids))

    def loss(self, input_ids: torch.Tensor, labels: torch.Tensor, objective="nll", **kwargs):
        return objx.linear_prob_loss(self.hidden(input_ids), self.lm_head.weight, labels, objective=objective,
                                     **kwargs)
