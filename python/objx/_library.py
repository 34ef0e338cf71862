"""Loads objx's compiled ops: importing this module registers torch.ops.objx.* (the library's
TORCH_LIBRARY blocks). The library uses no CPython API, so one build serves every Python version."""

import os

import torch

LIBRARY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "libobjx_ops.so")
torch.ops.load_library(LIBRARY)
