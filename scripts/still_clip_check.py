"""Still clips: a probe held on the hip, 8 frames that differ only by noise. Does the overlay
rule (``src_model.preprocess.burned_in``) keep the structure, and does it still keep boxes off
overlays?

    OMP_NUM_THREADS=2 .venv/bin/python scripts/still_clip_check.py     # ~6 min

Each clip is one labelled frame repeated 8 times with Gaussian noise of ``sigma`` grey levels,
rounded to uint8 (and clipped at 255: with ``gain`` 1.6 the bony echo's core is 255 in every
frame, as on a scanner whose gain clips bone). Two sets, on seeds used by nothing else:

* phantom v1 (roof label), seeds ``--v1-seeds``, the slice with the largest label, gains 1.0 and
  1.6: pooled dice over all clips with the rule on (the default) and off
  (``skip_overlays=False``), and of the single frames (no frame-to-frame evidence);
* phantom v2 sweeps with burned-in overlays, seeds ``--v2-seeds``, the frame with the largest
  label, at its pixel spacing, gain 1.0, the noise added to the tissue only (an overlay is drawn
  on the frame after it): slices with a box on an overlay and pooled dice (roof), rule on and
  off.

Writes ``--report`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from overlay_check import overlay_hits  # noqa: E402
from overlay_rule_sweep import parse_seeds  # noqa: E402

FRAMES = 8
SIGMAS = (0.3, 1.0, 3.0)


def still_clip(frame: np.ndarray, sigma: float, gain: float, rng: np.random.Generator) -> np.ndarray:
    """``FRAMES`` copies of ``frame`` times ``gain`` plus noise, rounded and clipped to uint8."""
    noisy = frame.astype(np.float32) * gain + rng.normal(0, sigma, (FRAMES, *frame.shape))
    return np.clip(noisy, 0, 255).round().astype(np.uint8)


def check_v1(model, seeds: list[int]) -> list[dict]:
    from napari_roiseg.segment import segment_array
    from sample_data.phantom import make_phantom
    from src_model.metrics import SegmentationEvaluator

    rows = []
    for gain in (1.0, 1.6):
        for sigma in SIGMAS:
            on, off, single = (SegmentationEvaluator() for _ in range(3))
            clipped = []
            for seed in seeds:
                ph = make_phantom(seed, n_slices=40)
                z = int(np.argmax(ph.labels.sum(axis=(1, 2))))
                clip = still_clip(ph.volume[z], sigma, gain, np.random.default_rng(seed))
                truth = np.repeat(ph.labels[z:z + 1], FRAMES, axis=0)
                clipped.append(float((clip[:, truth[0] > 0] == 255).all(axis=0).mean()))
                on.process(segment_array(clip, model).labels, truth)
                off.process(segment_array(clip, model, skip_overlays=False).labels, truth)
                single.process(segment_array(clip[:1], model).labels, truth[:1])
            rows.append({"gain": gain, "sigma": sigma,
                         "label_clipped_in_every_frame": round(float(np.mean(clipped)), 3),
                         **{k: round(e.evaluate()["pooled"]["dice"], 4)
                            for k, e in (("dice_rule_on", on), ("dice_rule_off", off),
                                         ("dice_single_frames", single))}})
            print(rows[-1], flush=True)
    return rows


def check_v2(model, seeds: list[int]) -> list[dict]:
    from napari_roiseg.segment import segment_array
    from sample_data.phantom_v2 import make_phantom_v2
    from src_model.metrics import SegmentationEvaluator

    rows = []
    for sigma in SIGMAS:
        out = {"sigma": sigma}
        for name, skip in (("rule_on", True), ("rule_off", False)):
            evaluator, slices_hit = SegmentationEvaluator(), 0
            for seed in seeds:
                ph = make_phantom_v2(seed, n_slices=8)
                z = int(np.argmax(ph.labels.sum(axis=(1, 2))))
                clip = still_clip(ph.volume[z], sigma, 1.0, np.random.default_rng(seed))
                clip[:, ph.overlay_mask] = ph.volume[z][ph.overlay_mask]  # burned in: no noise
                result = segment_array(clip, model, spacing=ph.spacing, skip_overlays=skip)
                evaluator.process(result.labels, np.repeat(ph.labels[z:z + 1], FRAMES, axis=0))
                slices_hit += len({h["slice"]
                                   for h in overlay_hits(result.boxes, ph.style["overlays"])})
            out[f"slices_with_a_box_on_an_overlay_{name}"] = slices_hit
            out[f"dice_{name}"] = round(evaluator.evaluate()["pooled"]["dice"], 4)
        out["slices"] = FRAMES * len(seeds)
        rows.append(out)
        print(out, flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="checkpoint (default: the shipped model)")
    p.add_argument("--v1-seeds", default="9321-9330")
    p.add_argument("--v2-seeds", default="9331-9340")
    p.add_argument("--report", default=str(ROOT / "docs" / "still_clip_check.json"))
    args = p.parse_args()
    from napari_roiseg.segment import load_model

    model = load_model(args.model)
    t0 = time.perf_counter()
    report = {"model": args.model or "shipped default", "frames": FRAMES,
              "v1_seeds": args.v1_seeds, "v2_seeds": args.v2_seeds,
              "v1_roof": check_v1(model, parse_seeds(args.v1_seeds)),
              "v2_overlays": check_v2(model, parse_seeds(args.v2_seeds)),
              "seconds": round(time.perf_counter() - t0, 1),
              "torch_threads": torch.get_num_threads()}
    Path(args.report).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.report} in {report['seconds']} s")


if __name__ == "__main__":
    main()
