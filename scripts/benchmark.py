#!/usr/bin/env python3
"""Benchmark (not a test): per-stage time and peak memory of ``run_segmentation`` on the sample and on a
384x384x160 volume, and fast N4 against SimpleITK's default full-resolution N4.

Each case runs in a fresh subprocess, so its peak resident memory (``ru_maxrss``, which counts ITK's and torch's
C++ allocations that tracemalloc misses) belongs to that case alone. Times are wall seconds; CPU seconds (all
threads) are printed beside them because a shared machine inflates wall time but hardly CPU time.

    python scripts/benchmark.py                       # default model, all cases (the default N4 takes minutes)
    python scripts/benchmark.py --model Resources/Models/knee-bones/v3 --device cpu
    python scripts/benchmark.py --timing-model 8,16,32,64   # random weights of that size, when no model exists yet
    python scripts/benchmark.py --cases n4-sample            # one case
    python scripts/benchmark.py --cases process-sample --repeat 3   # the whole `kneeseg segment` process, 3 times
    python scripts/benchmark.py --cases pipeline-sample --no-tta     # one network pass, no mirrored second one

"process-sample" times what a user waits for: a fresh ``kneeseg segment SAMPLE -o OUT.seg.nrrd`` (N4 on), from
process start (interpreter, imports) to the file written, as wall and CPU seconds of the child process; the
in-process stages it prints are beside it.

The N4 comparison: mean over the tissue (Otsu foreground) of |fast - default| / |default| on the corrected
images, raw and after scaling each to unit mean there (N4's field is defined up to a constant factor, which
intensity normalization removes anyway). "default" is SimpleITK's N4BiasFieldCorrectionImageFilter with its
default settings on the full-resolution image and no mask (it then fits the air too); with --masked-reference
also the same filter given our foreground mask, which isolates the cost of shrinking from the choice of mask.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "KneeSegmentation"))
sys.path.insert(0, str(ROOT))

SAMPLE = ROOT / "Resources" / "SampleData" / "MESE_T2_knee_echo1.nrrd"
BIG_SIZE = (384, 384, 160)
BIG_SPACING = (0.365, 0.365, 0.7)  # the DESS label maps' grid
CASES = ("process-sample", "pipeline-sample", "pipeline-384", "n4-sample", "n4-384")
TARGETS = {"process-sample": 5.0, "pipeline-sample": 5.0, "pipeline-384": 20.0, "peak_mb": 2048.0, "n4_speedup": 30.0, "n4_diff": 0.02}
# Intensities per label of the DESS label maps (0 background, 1-4 cartilages, 5 femur, 6 tibia, 7 patella,
# 8 fibula, 9-10 menisci): a plausible proton-density-like contrast for a synthetic knee.
LABEL_INTENSITY = {0: 350.0, 1: 700.0, 2: 700.0, 3: 700.0, 4: 700.0, 5: 520.0, 6: 520.0, 7: 520.0,
                   8: 520.0, 9: 120.0, 10: 120.0}


# ----------------------------------------------------------------------------------------------- inputs

def big_volume():
    """A 384x384x160 knee: the real DESS bone/cartilage label map of the mskt sdist rendered with per-label
    intensities, a smooth bias and noise; a geometric phantom if the data cache is unavailable."""
    import numpy as np
    import SimpleITK as sitk

    rng = np.random.default_rng(0)
    labels = None
    try:
        from trainer.mskt import fetch_mskt
        labels = sitk.ReadImage(str(fetch_mskt() / "SAG_3D_DESS_RIGHT_bones_cart_men_fib-label.nrrd"))
    except Exception as error:  # noqa: BLE001 - a benchmark falls back rather than stops
        print(f"(no mskt label map: {error}; using a geometric phantom)", file=sys.stderr)
    if labels is not None and labels.GetSize() == BIG_SIZE:
        lab = sitk.GetArrayFromImage(labels)
        lut = np.zeros(int(lab.max()) + 1, np.float32)
        for value, intensity in LABEL_INTENSITY.items():
            if value < lut.size:
                lut[value] = intensity
        array = lut[lab]
        geometry = labels
    else:
        z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in BIG_SIZE[::-1]], indexing="ij")
        array = np.where(x ** 2 + y ** 2 < 0.5, np.where((x - 0.1) ** 2 + y ** 2 < 0.1, 520.0, 700.0), 30.0)
        array = array.astype(np.float32)
        geometry = None
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, n, dtype=np.float32) for n in array.shape], indexing="ij")
    array *= np.exp(0.3 * xx - 0.2 * yy + 0.1 * zz)
    array += rng.normal(0, 15, array.shape).astype(np.float32)
    image = sitk.GetImageFromArray(np.abs(array).astype(np.float32))
    if geometry is not None:
        image.CopyInformation(geometry)
    else:
        image.SetSpacing(BIG_SPACING)
    return image


def case_image(case: str):
    from KneeSegmentationLib.segment.io import read_image
    return read_image(SAMPLE) if case.endswith("sample") else big_volume()


# ----------------------------------------------------------------------------------------------- cases (child)

def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kB


def run_pipeline_case(case: str, model: str | None, device: str, tta: bool | None = None) -> dict:
    from KneeSegmentationLib.segment.pipeline import SegmentationSettings, run_segmentation

    image = case_image(case)
    settings = SegmentationSettings(model=model, device=device, tta=tta)
    wall, cpu = time.perf_counter(), cpu_seconds()
    result = run_segmentation(image, settings)
    wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    return {"case": case, "size": list(image.GetSize()), "wall_s": wall, "cpu_s": cpu, "peak_mb": peak_mb(),
            "stages": result.timings, "device": result.device, "model": result.model.tag,
            "warnings": result.warnings}


def relative_difference(fast, reference, region) -> tuple[float, float]:
    """Mean |fast - reference| / |reference| over ``region``: raw, and after scaling each to unit mean there."""
    import numpy as np
    import SimpleITK as sitk

    a, b = sitk.GetArrayFromImage(fast)[region], sitk.GetArrayFromImage(reference)[region]
    raw = float(np.mean(np.abs(a - b) / np.abs(b)))
    a, b = a / a.mean(), b / b.mean()
    return raw, float(np.mean(np.abs(a - b) / np.abs(b)))


def run_n4_case(case: str, with_default: bool, masked_reference: bool) -> dict:
    import SimpleITK as sitk

    from KneeSegmentationLib.segment.n4 import foreground_mask, n4_correct, shrink_factors

    image = case_image(case)
    out = {"case": case, "size": list(image.GetSize()), "shrink": shrink_factors(image)}
    wall, cpu = time.perf_counter(), cpu_seconds()
    fast = n4_correct(image)
    out.update(fast_wall_s=time.perf_counter() - wall, fast_cpu_s=cpu_seconds() - cpu, peak_mb=peak_mb())
    if not with_default:
        return out
    # Compared where there is tissue (Otsu): in the air the relative difference of noise means nothing.
    region = sitk.GetArrayFromImage(sitk.OtsuThreshold(image, 0, 1, 128)).astype(bool)
    references = {"default": ()}
    if masked_reference:
        references["default+mask"] = (foreground_mask(image),)
    for name, extra in references.items():
        wall, cpu = time.perf_counter(), cpu_seconds()
        n4 = sitk.N4BiasFieldCorrectionImageFilter()  # SimpleITK's defaults, full resolution
        n4.Execute(image, *extra)
        corrected = sitk.Divide(image, sitk.Exp(n4.GetLogBiasFieldAsImage(image)))
        out[name] = {"wall_s": time.perf_counter() - wall, "cpu_s": cpu_seconds() - cpu,
                     "diff": relative_difference(fast, corrected, region),
                     "uncorrected_diff": relative_difference(image, corrected, region)}
    return out


def child(args: argparse.Namespace) -> None:
    if args.threads:
        import SimpleITK as sitk
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    if args.case.startswith("pipeline"):
        result = run_pipeline_case(args.case, args.model, args.device, args.tta)
    else:
        result = run_n4_case(args.case, with_default=args.case == "n4-sample" or args.default_n4_384,
                             masked_reference=args.masked_reference)
    print("RESULT " + json.dumps(result))


# ----------------------------------------------------------------------------------------------- driver

def timing_model(features: str, spacing: float, patch: int, root: Path) -> Path:
    """A model of the given size with random weights: pipeline timing does not depend on the weights."""
    import torch

    from KneeSegmentationLib.models.card import ModelCard, ModelPlan, Preprocessing
    from KneeSegmentationLib.models.store import save_model
    from KneeSegmentationLib.models.network import UNetConfig, build_network

    torch.manual_seed(0)
    config = UNetConfig(features=tuple(int(f) for f in features.split(",")))
    card = ModelCard(name="timing-only", version=0, plan=ModelPlan(config, Preprocessing((spacing,) * 3, (patch,) * 3)),
                     description="Random weights, for benchmarking speed only; segments nothing.")
    return save_model(build_network(card.plan).eval(), card, root)


def tta_option(args: argparse.Namespace) -> list[str]:
    """The child's mirrored-pass option: none (the model's choice), ``--tta`` or ``--no-tta``."""
    return [] if args.tta is None else ["--tta" if args.tta else "--no-tta"]


def run_child(case: str, args: argparse.Namespace, model: str | None) -> dict:
    cmd = [sys.executable, __file__, "--child", case, "--device", args.device, "--threads", str(args.threads)]
    if model:
        cmd += ["--model", model]
    if args.default_n4_384:
        cmd.append("--default-n4-384")
    if args.masked_reference:
        cmd.append("--masked-reference")
    cmd += tta_option(args)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"case": case, "error": tail[0]}
    return json.loads(lines[-1][len("RESULT "):])


def mark(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def print_pipeline(r: dict) -> None:
    if "error" in r:
        print(f"{r['case']:<16} FAILED: {r['error']}")
        return
    target = TARGETS[r["case"]]
    stages = ", ".join(f"{k} {v:.2f}" for k, v in r["stages"].items())
    print(f"{r['case']:<16} {'x'.join(map(str, r['size'])):<12} {r['wall_s']:7.2f} {r['cpu_s']:7.2f} "
          f"{r['peak_mb']:8.0f}   target ≤{target:g} s: {mark(r['wall_s'] <= target)}, "
          f"≤{TARGETS['peak_mb']:.0f} MB: {mark(r['peak_mb'] <= TARGETS['peak_mb'])}")
    print(f"{'':<16} stages (s): {stages}; device {r['device']}; model {r['model']}")


def print_n4(r: dict) -> None:
    if "error" in r:
        print(f"{r['case']:<16} FAILED: {r['error']}")
        return
    line = (f"{r['case']:<16} {'x'.join(map(str, r['size'])):<12} shrink {r['shrink']}  fast {r['fast_wall_s']:6.2f} s "
            f"wall / {r['fast_cpu_s']:6.2f} s CPU, peak {r['peak_mb']:.0f} MB")
    print(line)
    for name in ("default", "default+mask"):
        if name not in r:
            continue
        ref = r[name]
        wall_x, cpu_x = ref["wall_s"] / r["fast_wall_s"], ref["cpu_s"] / r["fast_cpu_s"]
        print(f"{'':<16} {name:<13} full-res N4 {ref['wall_s']:7.1f} s wall / {ref['cpu_s']:7.1f} s CPU; speed-up "
              f"{wall_x:.0f}x wall, {cpu_x:.0f}x CPU (target ≥{TARGETS['n4_speedup']:g}x: "
              f"{mark(min(wall_x, cpu_x) >= TARGETS['n4_speedup'])})")
        print(f"{'':<16} {'':<13} mean relative difference in the tissue: {100 * ref['diff'][0]:.2f} % raw, "
              f"{100 * ref['diff'][1]:.2f} % unit-mean scaled (target ≤2 %: "
              f"{mark(ref['diff'][1] <= TARGETS['n4_diff'])}); uncorrected image: "
              f"{100 * ref['uncorrected_diff'][1]:.2f} %")


def run_process_case(args: argparse.Namespace, model: str | None, tmp: Path, run: int = 0) -> dict:
    """One whole ``kneeseg segment`` process on the sample: wall from start to exit, CPU of the child. Each
    ``run`` writes its own file (the CLI never overwrites one)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "KneeSegmentation"), str(ROOT),
                                                       os.environ.get("PYTHONPATH", "")]))
    out = tmp / f"process-{run}.seg.nrrd"
    cmd = [sys.executable, "-m", "KneeSegmentationLib.cli.main", "segment", str(SAMPLE), "-o", str(out), "-q",
           "--device", args.device] + (["--model", model] if model else []) + tta_option(args)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0 or not out.is_file():
        return {"case": "process-sample", "error": (proc.stderr or proc.stdout).strip()[-300:]}
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    stages = next((line for line in proc.stdout.splitlines() if line.startswith("timings:")), "")
    return {"case": "process-sample", "wall_s": wall, "cpu_s": cpu, "stages": stages}


def print_process(r: dict) -> None:
    if "error" in r:
        print(f"{r['case']:<16} FAILED: {r['error']}")
        return
    target = TARGETS[r["case"]]
    print(f"{r['case']:<16} {'process':<12} {r['wall_s']:7.2f} {r['cpu_s']:7.2f} {'':>8}  "
          f"(≤{target:g} s wall: {mark(r['wall_s'] <= target)})")
    print(f"{'':<16} {r['stages']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs of each case, each in a fresh process and printed (a shared machine varies)")
    parser.add_argument("--model", help="model version folder (default: the default model)")
    parser.add_argument("--timing-model", metavar="FEATURES",
                        help="benchmark a random-weight model with these U-Net features, e.g. 8,16,32,64")
    parser.add_argument("--timing-spacing", type=float, default=1.5, help="its input spacing (mm)")
    parser.add_argument("--timing-patch", type=int, default=96, help="its patch size (voxels per axis)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    parser.add_argument("--threads", type=int, default=0, help="ITK threads (0: ITK's default)")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {', '.join(CASES)}")
    parser.add_argument("--default-n4-384", action="store_true",
                        help="also run the default full-resolution N4 on 384x384x160 (tens of minutes)")
    parser.add_argument("--masked-reference", action="store_true",
                        help="also compare with default full-resolution N4 given the same foreground mask")
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                        help="force the pipeline's mirrored second pass on or off (default: the model's choice)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.case = args.child
        child(args)
        return
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = set(cases) - set(CASES)
    if unknown:
        parser.error(f"unknown cases {sorted(unknown)}; choose from {', '.join(CASES)}")
    with tempfile.TemporaryDirectory(prefix="kneeseg-bench-") as tmp:
        model = args.model
        if args.timing_model:
            model = str(timing_model(args.timing_model, args.timing_spacing, args.timing_patch, Path(tmp)))
            print(f"timing-only model (random weights): features {args.timing_model}, "
                  f"{args.timing_spacing} mm, patch {args.timing_patch}")
        print(f"{'case':<16} {'size':<12} {'wall s':>7} {'CPU s':>7} {'peak MB':>8}")
        for case in cases:
            for run in range(max(1, args.repeat)):
                if case == "process-sample":
                    print_process(run_process_case(args, model, Path(tmp), run))
                else:
                    result = run_child(case, args, model)
                    (print_pipeline if case.startswith("pipeline") else print_n4)(result)
                sys.stdout.flush()


if __name__ == "__main__":
    main()
