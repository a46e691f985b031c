"""Test-time ROI filter sweep for phantom v2 pretraining candidates (selection data only).

    OMP_NUM_THREADS=1 .venv/bin/python scripts/v2_filter_sweep.py shipped runs/v2a.pt

For each model (``shipped`` = the packaged default) and each filter (score threshold, top-k):
pooled dice and mean dice over slices with an object on the v1 validation phantoms 50-51 (every
2nd slice) and the v2 validation sweeps 50-53 (every 2nd frame), each segmented at its own size
and pixel spacing, and the number of slices with a box on an overlay on v2 seeds 9001-9020 (10
frames each; not the overlay check's seeds 8001-8025). No test seed is read. Prints one line per
row and writes ``--report`` (JSON). Segmentation runs as the engine's default does, so with
burned-in overlay proposals dropped; the rows in docs/phantom_v2_pretraining.json were measured
before that rule (see the note there).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

FILTERS = ((0.3, 3), (0.5, 3), (0.7, 1), (0.9, 1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+", help="checkpoints, or 'shipped'")
    p.add_argument("--report", default=str(ROOT / "runs" / "v2_filter_sweep.json"))
    args = p.parse_args()
    from overlay_check import overlay_hits

    from napari_roiseg.cli.train_job import load_source
    from napari_roiseg.segment import load_model, segment_array
    from sample_data.phantom_v2 import make_phantom_v2
    from src_model.metrics import SegmentationEvaluator

    v1 = [load_source(f"phantom:{s}:128") for s in (50, 51)]
    v2 = [load_source(f"phantom2:{s}:24:roof") for s in (50, 51, 52, 53)]
    overlay_sweeps = [make_phantom_v2(s, n_slices=10) for s in range(9001, 9021)]
    rows = {}
    for path in args.models:
        model = load_model(None if path == "shipped" else path)
        base = model.config
        for thr, top in FILTERS:
            model.config = base.replace(test_score_threshold=thr, test_top_k=top,
                                        test_single_object=False)
            row = {}
            for name, vols in (("v1", v1), ("v2", v2)):
                ev = SegmentationEvaluator()
                for v in vols:
                    ev.process(segment_array(v.volume[::2], model, spacing=v.spacing).labels,
                               v.labels[::2])
                m = ev.evaluate()
                row[name] = round(m["pooled"]["dice"], 3)
                row[name + "_ne"] = round(m["per_slice_mean_nonempty"]["dice"], 3)
            row["overlay_slices"] = sum(
                len({h["slice"] for h in overlay_hits(
                    segment_array(ph.volume, model, spacing=ph.spacing).boxes,
                    ph.style["overlays"])})
                for ph in overlay_sweeps)
            rows[f"{path} thr{thr} top{top}"] = row
            print(path, thr, top, row, flush=True)
        model.config = base
    Path(args.report).parent.mkdir(parents=True, exist_ok=True)
    Path(args.report).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
