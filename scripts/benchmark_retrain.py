#!/usr/bin/env python3
"""Benchmark (not a test) of the correct-and-retrain loop: does fine-tuning on a few corrected cases fix a
contrast the model does poorly on, how long does it take, and what does it cost elsewhere?

The simulation, all seeded:
1. **Contrast**: a contrast is one table of per-tissue intensities of the trainer's generator. ``--candidates``
   tables are drawn (seeds 0..N-1); the model segments ``--probe`` renders of the held-out label map
   (``--heldout-map``, T2-label of the mskt sdist by default) with each, and the table with the lowest mean
   Dice is kept. Pose, deformation, bias, resolution, noise and field of view still vary per case.
2. **Corrections**: ``--n-train`` renders of the held-out map with that contrast are saved as training cases
   (``cases.save_training_case``; the model's output is kept as the "original", so case.json records how much
   a radiologist would have edited), their true labels standing in for the radiologist's corrections.
3. **Retrain**: ``retrain.RetrainJob``, the same child process and comparison the module and ``kneeseg
   retrain`` use (new version written to a temporary models root; the real ones are not touched).
4. **Before / after**, by sliding-window inference on the model grid (as the trainer's evaluation):
   - ``target``: ``--n-test`` OTHER renders of the held-out map with the same contrast (other seeds);
   - ``same contrast, other anatomy``: renders of the training maps (fibula included) with that contrast;
   - ``forgetting``: renders of the held-out map with random contrasts (the ones it was fine).

    python scripts/benchmark_retrain.py --model Resources/Models/knee-bones/v4 --dataset runs/dataset3 \\
        --steps 150 --out runs/benchmark_retrain
    python scripts/benchmark_retrain.py --model Testing/Data/Models/tiny-phantom/v1 --dataset /tmp/tinyds \\
        --heldout-map val_nofib --steps 3 --n-train 2 --n-test 2 --candidates 3 --probe 1     # smoke run

Prints a table and writes ``results.json`` in ``--out``.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "KneeSegmentation"))
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402
import torch  # noqa: E402

from KneeSegmentationLib.learn.cases import save_training_case  # noqa: E402
from KneeSegmentationLib.constants import BONES  # noqa: E402
from KneeSegmentationLib.segment.infer import predict_probabilities  # noqa: E402
from KneeSegmentationLib.metrics import dice  # noqa: E402
from KneeSegmentationLib.models.store import LoadedModel, load_model  # noqa: E402
from KneeSegmentationLib.segment.preprocess import model_grid_around  # noqa: E402
from KneeSegmentationLib.learn.retrain import RetrainJob  # noqa: E402
from KneeSegmentationLib.learn.status import RetrainSettings  # noqa: E402

from trainer.dataset import load_dataset  # noqa: E402
from trainer.generator import Generator, Sample  # noqa: E402
from trainer.shapemodel import MAP_ID_PREFIX  # noqa: E402

CASE_OFFSET_MM = 10.0  # case windows centred within ±this of the joint (as the trainer's evaluation)
SEED_PROBE, SEED_TRAIN, SEED_TEST, SEED_OTHER, SEED_RANDOM = 1000, 2000, 3000, 4000, 5000


class FixedContrastGenerator(Generator):
    """The trainer's generator with one tissue-intensity table (a 'contrast') for every sample."""

    def __init__(self, *args, contrast: tuple[torch.Tensor, torch.Tensor], **kw) -> None:
        super().__init__(*args, **kw)
        self.contrast = contrast

    def _tissue_intensities(self, rng):
        rng.uniform(size=2)  # keep the stream moving like the parent class, so seeds still vary the rest
        return self.contrast


def draw_contrast(generator: Generator, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    return generator._tissue_intensities(np.random.default_rng(seed))


def render(generator: Generator, map_index: int, n: int, seed: int) -> list[Sample]:
    rng, gen = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    m = generator.maps[map_index]
    return [generator.sample(rng, gen, map_index=map_index,
                             center=m.joint_center + rng.uniform(-CASE_OFFSET_MM, CASE_OFFSET_MM, 3))
            for _ in range(n)]


def predict(model: LoadedModel, s: Sample) -> np.ndarray:
    prob, _, _ = predict_probabilities(model.network, s.image, model.card.preprocessing.patch_size,
                                       torch.device("cpu"))
    inside = s.inside if s.inside is not None else np.ones(s.target.shape, bool)
    return (np.argmax(prob, axis=0) * inside).astype(np.uint8)


def dice_table(model: LoadedModel, samples: list[Sample]) -> dict:
    """Mean (and per-case) Dice per bone over the samples where the bone is in the truth; 'mean' over bones."""
    per_bone: dict[str, list[float]] = {b.name: [] for b in BONES}
    for s in samples:
        pred = predict(model, s)
        for b in BONES:
            if (s.target == b.label).any():
                per_bone[b.name].append(dice(pred == b.label, s.target == b.label))
    out = {k: round(float(np.mean(v)), 4) for k, v in per_bone.items() if v}
    out["mean"] = round(float(np.mean([out[k] for k in per_bone if k in out])), 4) if out else float("nan")
    out["n"] = len(samples)
    return out


def as_image(s: Sample, spacing: tuple[float, float, float]) -> tuple[sitk.Image, sitk.Image]:
    """A rendered window as an image + labelmap with geometry (identity direction on the model grid)."""
    grid = model_grid_around(s.params["center"], spacing, s.image.shape[::-1])
    image = sitk.GetImageFromArray((s.image * 1000).astype(np.float32))
    image.CopyInformation(grid)
    labels = sitk.GetImageFromArray(s.target.astype(np.uint8))
    labels.CopyInformation(grid)
    return image, labels


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, type=Path, help="model version folder to start from")
    p.add_argument("--dataset", required=True, type=Path, help="the trainer's prepared synthesis dataset")
    p.add_argument("--heldout-map", default="t2_left", help="map id of the held-out label map")
    p.add_argument("--out", type=Path, default=Path("benchmark_retrain"))
    p.add_argument("--candidates", type=int, default=12, help="contrasts tried")
    p.add_argument("--probe", type=int, default=2, help="renders per contrast while searching")
    p.add_argument("--contrast-seed", type=int, default=None, help="use this contrast, skip the search")
    p.add_argument("--n-train", type=int, default=4, help="corrected cases")
    p.add_argument("--n-test", type=int, default=6, help="other cases of that contrast, for before/after")
    p.add_argument("--n-other", type=int, default=3, help="renders per training map with that contrast")
    p.add_argument("--other-maps", default="",
                   help="map ids for 'other anatomy' (default: the real maps, not the shape-model draws)")
    p.add_argument("--n-random", type=int, default=4, help="held-out renders with random contrasts")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--trainer-arg", action="append", default=[], metavar="ARG",
                   help="extra option for `python -m trainer finetune`, e.g. --trainer-arg=--steps=400")
    p.add_argument("--threads", type=int, default=0, help="torch threads for this process (0: default)")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    a.out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    parent = load_model(a.model)
    pre = parent.card.preprocessing
    maps = load_dataset(a.dataset)
    ids = [m.id for m in maps]
    if a.heldout_map not in ids:
        raise SystemExit(f"map {a.heldout_map!r} not in the dataset ({ids})")
    held = ids.index(a.heldout_map)
    spacing, window = pre.spacing_mm, tuple(pre.patch_size)
    random_gen = Generator(maps, spacing, window, pre.normalization)

    # 1. the contrast the model does worst on
    search = []
    for seed in (range(a.candidates) if a.contrast_seed is None else [a.contrast_seed]):
        contrast = draw_contrast(random_gen, seed)
        gen = FixedContrastGenerator(maps, spacing, window, pre.normalization, contrast=contrast)
        score = dice_table(parent, render(gen, held, a.probe, SEED_PROBE + seed))
        search.append({"seed": seed, **score})
        print(f"contrast {seed:2d}: mean Dice {score['mean']:.3f}", flush=True)
    worst = min(search, key=lambda r: r["mean"])
    contrast = draw_contrast(random_gen, worst["seed"])
    fixed = FixedContrastGenerator(maps, spacing, window, pre.normalization, contrast=contrast)

    # 2. corrected cases
    work = Path(tempfile.mkdtemp(prefix="bench-retrain-", dir=a.out))
    cases_dir, models_root = work / "cases", work / "models"
    edits = []
    for s in render(fixed, held, a.n_train, SEED_TRAIN):
        image, truth = as_image(s, spacing)
        original = sitk.GetImageFromArray(predict(parent, s))
        original.CopyInformation(truth)
        folder = save_training_case(image, truth, cases_dir, original=original, source=f"{a.heldout_map} rendered",
                                    model_tag=parent.card.tag)
        edits.append(json.loads((folder / "case.json").read_text())["edit"]["dice"])

    # 3. retrain, exactly as `kneeseg retrain` does
    settings = RetrainSettings(model=a.model, cases=cases_dir, synthetic=a.dataset, root=models_root, steps=a.steps,
                               make_default="no", device="cpu", n4=False, trainer_args=tuple(a.trainer_arg))
    t0 = time.perf_counter()
    job = RetrainJob(settings).start()
    last = -1
    status = job.poll()
    try:
        while not status.finished:
            if status.step != last and status.loss:
                last = status.step
                print(f"  {status.phase} step {status.step}/{status.total_steps} loss {status.loss[-1][1]:.3f}",
                      flush=True)
            status = job.wait(timeout=10)
    finally:
        if not status.finished:  # interrupted: the child runs in its own session, end it too
            job.stop()
    if status.phase != "done":
        raise SystemExit(f"retraining {status.phase}: {status.error}")
    retrain_s = time.perf_counter() - t0
    result = status.result
    new = load_model(result.model)

    # 4. before / after
    test = render(fixed, held, a.n_test, SEED_TEST)
    wanted = set(a.other_maps.split(",")) if a.other_maps else {m.id for m in maps if not m.id.startswith(MAP_ID_PREFIX)}
    others = [s for i, m in enumerate(maps) if i != held and m.id in wanted
              for s in render(fixed, i, a.n_other, SEED_OTHER + i)]
    randoms = render(random_gen, held, a.n_random, SEED_RANDOM)
    rows = {}
    for name, samples in (("target: held-out map, that contrast, other cases", test),
                          ("same contrast, other anatomy (training maps)", others),
                          ("forgetting: held-out map, random contrasts", randoms)):
        if samples:
            rows[name] = {"before": dice_table(parent, samples), "after": dice_table(new, samples)}

    results = {
        "model": str(a.model), "parent": parent.card.tag, "new": result.tag, "device": "cpu",
        "torch_threads": torch.get_num_threads(), "contrast_seed": worst["seed"],
        "contrast_means": [round(float(v), 1) for v in contrast[0]],
        "contrast_search": search, "n_train": a.n_train, "edit_dice_of_corrections": edits,
        "steps": a.steps, "trainer_args": a.trainer_arg, "retrain_s": round(retrain_s, 1),
        "train_s": round(result.train_s, 1), "compare_s": round(result.evaluate_s, 1),
        "loss": status.loss[-1][1] if status.loss else None,
        "retrain_comparison_on_held_out_cases": {"new": result.metrics["score"],
                                                 "parent": result.parent_metrics["score"]},
        "dice": rows, "total_s": round(time.perf_counter() - t_start, 1),
    }
    (a.out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"\nworst contrast: seed {worst['seed']} (probe mean Dice {worst['mean']:.3f}); "
          f"{a.n_train} corrected cases; {a.steps} fine-tuning steps in {result.train_s:.0f} s "
          f"(whole retrain incl. comparison {retrain_s:.0f} s, CPU)")
    for name, r in rows.items():
        b, f = r["before"], r["after"]
        bones = " ".join(f"{k} {b[k]:.3f}->{f[k]:.3f}" for k in ("Femur", "Tibia", "Fibula") if k in b)
        print(f"{name} (n={b['n']}): mean {b['mean']:.3f} -> {f['mean']:.3f}   {bones}")
    print(f"results: {a.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
