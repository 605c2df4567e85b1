"""Kept so that plugins written against an earlier plugin guide import unchanged: `Linear` is now plain
`nn.Linear`. Fast CPU inference (weights stored for few-row products) is an opt-in backend applied to a
frozen model, and it speeds up every `nn.Linear` of a model, a plugin's included: `mmxattn.inference`.
"""

from torch.nn import Linear

__all__ = ["Linear"]
