"""Give loaded weights their own aligned memory.

safetensors and mmap'd checkpoints hand out tensors at arbitrary byte offsets inside the file's
buffer. CPU kernels (oneDNN, BLAS) choose their vector paths by pointer alignment, so a model
adopting such tensors (`load_state_dict(assign=True)`, diffusers' low-memory loading) computes
the same math with a different rounding than the identical model built in memory. Copying each
misaligned tensor once into torch's own (64-byte aligned) storage makes a loaded model
bit-identical to the model that was saved.
"""

from __future__ import annotations

from torch import Tensor, nn

ALIGNMENT = 64  # bytes; torch's CPU allocator aligns every allocation to this


def realign_(module: nn.Module) -> nn.Module:
    """Copy, in place, every CPU parameter and buffer of `module` whose data is misaligned."""
    copies: dict[int, Tensor] = {}  # one copy per storage, so tied weights stay tied
    for m in module.modules():
        for table in (m._parameters, m._buffers):
            for t in table.values():
                if t is None or t.is_meta or t.device.type != "cpu" or t.data_ptr() % ALIGNMENT == 0:
                    continue
                key = t.data_ptr()
                if key not in copies:
                    copies[key] = t.data.clone()
                t.data = copies[key]
    return module
