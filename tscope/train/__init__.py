"""Training TerraScope in two stages (``tscope train stage1|stage2``; see ``docs/train.md``).

``config`` (YAML recipes), ``dataset`` (Terra-CoT / RES JSON lines -> samples), ``forward`` (teacher
forcing with ground-truth region tokens after each [SEG]), ``losses``, ``freeze`` (what trains per
stage, LoRA), ``schedule``, ``checkpoint``, ``evaluate`` (held-out scoring), ``trainer`` (the loop).
Modules import torch only where needed.
"""
