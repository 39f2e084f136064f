"""CPU-only fix: PyPI's torchvision is CUDA-linked and fails to import beside torch+cpu.

Guards the two ``register_fake`` decorators of ``torchvision/_meta_registrations.py`` with
``torchvision.extension._has_ops()`` so transforms, processors and vLLM's VL models import
(C++ ops stay unavailable). Idempotent; used by ``scripts/install.sh`` on CPU machines only.
"""
import importlib.util
import pathlib
import re

spec = importlib.util.find_spec("torchvision")
path = pathlib.Path(spec.origin).parent / "_meta_registrations.py"
text = path.read_text()
pattern = re.compile(r'^@torch\.library\.register_fake\("torchvision::(nms|qnms)"\)\n', re.M)
patched = pattern.sub(
    lambda m: f'@(torch.library.register_fake("torchvision::{m.group(1)}") '
    f"if torchvision.extension._has_ops() else (lambda f: f))\n",
    text,
)
if patched != text:
    path.write_text(patched)
    print(f"patched {path}")
