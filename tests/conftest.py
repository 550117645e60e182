"""Test-session set-up: Triton kernels run on CPU tensors through Triton's interpreter, which
must be switched on before triton is first imported."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
