"""The planner's training-memory estimate beside the values a forward pass keeps for backward.

::

    python benchmarks/activation_memory.py [--size full] [--planners default,resenc-m,resenc-l]

Plans the synthetic CT set of ``benchmarks/synthetic_ct.py`` (as ``benchmarks/ct_scale.py``),
builds each configuration's network on the meta device (nothing allocated, any patch size) in
training mode with deep supervision, runs one forward pass of the planned batch and counts,
through ``torch.autograd.graph.saved_tensors_hooks``, the values of every distinct storage
kept for backward. The planner's model (``planners/rules.py``) charges 3.5 bytes per such value
plus 0.5 GiB and 16 bytes per parameter; the table gives its value count (backed out of the
recorded ``estimated_memory_gb``) beside the counted one, and the estimate those counted
values would give. A GPU (when lent) measures ``torch.cuda.max_memory_allocated`` instead.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ct_scale  # noqa: E402

from autoseg.networks.unet import build_network  # noqa: E402

GIB = 1024**3
FIXED, PER_PARAMETER, PER_VALUE = 0.5 * GIB, 16, 3.5  # planners/rules.py


def saved_values(config, in_channels: int, classes: int, batch: int) -> tuple[int, int]:
    """(values kept for backward, parameters) of one training forward pass, on meta."""
    with torch.device("meta"):
        net = build_network(config, in_channels, classes, deep_supervision=True).train()
        x = torch.empty((batch, in_channels, *config.patch_size))
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.requires_grad and t.grad_fn is None:  # a parameter: counted apart
            return t
        seen[t.untyped_storage()._cdata] = t.untyped_storage().nbytes() // t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = net(x)
    del out
    return sum(seen.values()), sum(p.numel() for p in net.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="full")
    parser.add_argument("--planners", default="default,resenc-m,resenc-l")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from autoseg.planners import get_planner

    fingerprint = ct_scale.fingerprint(args.size, 12, 0)
    print(
        "| planner | configuration | patch x batch | planner estimate GB | planner values/sample "
        "| counted values/sample | estimate from counted GB |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in args.planners.split(","):
        plans = get_planner(name)(fingerprint)
        for cname in ("2d", "3d_fullres"):
            config = plans.configuration(cname)
            batch = config.batch_size
            counted, params = saved_values(config, 1, plans.num_classes, batch)
            fixed = FIXED + PER_PARAMETER * params
            planned = (config.estimated_memory_gb * GIB - fixed) / (PER_VALUE * batch)
            from_counted = (fixed + PER_VALUE * counted) / GIB
            patch = "x".join(map(str, config.patch_size))
            print(
                f"| {name} | {cname} | {patch} x {batch} | {config.estimated_memory_gb:.2f} "
                f"| {planned / 1e6:.1f} M | {counted / batch / 1e6:.1f} M | {from_counted:.2f} |"
            )


if __name__ == "__main__":
    main()
