"""Time one fine-tuning step (4 frames of 384 x 512, the shipped model, the API's frozen blocks):
the RPN's prefix NMS (``RoiSegRPN.filter_proposals``) against torchvision's NMS over every
proposal, interleaved in one process.

    OMP_NUM_THREADS=2 .venv/bin/python scripts/bench_finetune_step.py      # ~1 min

The frames are phantom v2 sweeps of one 384 x 512 style (the cross-domain check's size); a step
is forward + backward + SGD update, as ``src_model.train`` runs it. Prints the median step time
of each variant, their ratio, and checks that both gave the same proposals (as sets: boxes of
exactly equal score may be listed in another order).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=3, help="timed steps per variant and round")
    p.add_argument("--size", type=int, nargs=2, default=(384, 512), metavar=("H", "W"))
    args = p.parse_args()
    from torchvision.models.detection.rpn import RegionProposalNetwork

    from napari_roiseg.finetune import DEFAULT_FREEZE_BLOCKS
    from napari_roiseg.segment import load_model
    from sample_data.phantom_v2 import draw_style, make_phantom_v2
    from src_model.data import SliceDataset, collate_slices

    style = draw_style(7002, shape=tuple(args.size))
    ph = make_phantom_v2(7201, n_slices=12, label="ilium_roof", style=style)
    data = SliceDataset([(ph.volume, ph.labels)])
    images, targets = collate_slices([data[i] for i in range(len(data)) if ph.labels[i].any()][:4])

    torch.manual_seed(0)
    net = load_model(None)
    net.train()
    net.backbone.freeze_blocks(DEFAULT_FREEZE_BLOCKS)
    rpn = net.rpn
    optimizer = torch.optim.SGD([q for q in net.parameters() if q.requires_grad], lr=0.0)
    prefix = type(rpn).filter_proposals.__get__(rpn)
    full = RegionProposalNetwork.filter_proposals.__get__(rpn)
    seen: dict[str, list] = {"prefix": [], "torchvision": []}

    def step(name: str) -> float:
        rpn.filter_proposals = prefix if name == "prefix" else full
        t0 = time.perf_counter()
        total = sum(net(images, targets).values())
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()  # lr 0: the weights stay, so both variants see the same model
        return time.perf_counter() - t0

    def proposals(name: str) -> list[set]:
        chosen, out = prefix if name == "prefix" else full, {}
        rpn.filter_proposals = lambda *a: out.setdefault("r", chosen(*a))
        with torch.no_grad():
            net(images, targets)
        # as sets of (score, box): boxes of exactly equal score may come in another order
        return [{(float(s), *map(float, b)) for b, s in zip(bs, ss)} for bs, ss in zip(*out["r"])]

    same = proposals("prefix") == proposals("torchvision")
    for name in seen:
        step(name)  # warm-up
    for _ in range(args.rounds):
        for name in seen:
            seen[name] += [step(name) for _ in range(args.steps)]
    t_prefix = statistics.median(seen["prefix"])
    t_full = statistics.median(seen["torchvision"])
    print(f"# {len(images)} frames of {args.size[0]}x{args.size[1]}, torch threads "
          f"{torch.get_num_threads()}, {args.rounds} interleaved rounds of {args.steps} steps")
    print(f"step, torchvision NMS over all proposals: {t_full:.3f} s (median)")
    print(f"step, prefix NMS (shipped):               {t_prefix:.3f} s (median)")
    print(f"speed-up {t_full / t_prefix:.2f}x; same proposals: {same}")


if __name__ == "__main__":
    main()
