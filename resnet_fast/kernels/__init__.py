"""Kernel implementations of the primitives (resnet_fast/ops/primitives.py) outside the C++ extension.

``resnet_fast.kernels.triton``: Triton kernels (CUDA tensors, or CPU tensors under
``TRITON_INTERPRET=1``). Importing it needs triton; the backend selector
(resnet_fast/backend.py) imports it lazily.
"""
