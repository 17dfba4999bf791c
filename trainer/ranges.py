"""Every random range of the synthetic-image generator, named and documented once (SynthSeg's lesson).

A reader sees the whole augmentation space here; ``generator.py`` only draws from these ranges. Units are
millimetres, degrees and normalized intensities (a tissue's mean intensity lies in [0, 1] before bias,
gamma and noise; the library's ``normalize`` maps the result to ~[0, 1] exactly as at inference).

Why these ranges:
- Orientation: on the model grid (LPS axes) a sagittal, coronal or axial acquisition is the same anatomy;
  what changes is how the leg lies in the scanner (flexion, rotation, abduction: ±25° about each axis),
  which knee it is (left/right mirror) and the subject's size (±15 %).
- Resolution: clinical knee protocols range from 0.3 mm isotropic 3D sequences to 2D stacks of 3–4 mm
  slices (the thesis's 24-slice protocol, the real MESE sample: 3 mm slices every 4 mm); the slice axis is
  any of the three grid axes (sagittal, coronal or axial stack).
- Intensities: any tissue can be bright or dark in some contrast (T1, T2, PD, fat-saturated, DESS, MESE
  echoes), so tissue means are uniform in [0, 1]; cortical bone has almost no MR signal in every sequence,
  so its rim is usually dark (``CORTEX_DARK_P``).
- Noise: Learn2Synth reported a synthetic-trained model falling from 0.91 to 0.31 Dice at modest noise
  when trained without it, so Rician-like noise up to 10 % of the intensity range is always on the menu.
"""
from __future__ import annotations

from contextlib import contextmanager

# --- Spatial -------------------------------------------------------------------------------------------
ROTATION_DEG = 25.0  # uniform in ±ROTATION_DEG about each of the three patient axes
SCALING = 0.15  # per-axis scale factor uniform in [1 - SCALING, 1 + SCALING]
FLIP_LR_P = 0.5  # probability of mirroring left/right (turns the right-knee maps into left knees)
ELASTIC_STD_MM = 3.0  # std of the random displacement at the control points...
ELASTIC_CONTROL_POINTS = 5  # ...of a coarse control grid per axis, upsampled trilinearly (smooth field)
CROP_OFFSET_MM = 30.0  # a joint-centred crop's centre lies within ±this of the knee joint centre (per axis)
# Crops along whole bones: knee-bones v2 saw only crops near the joint and never labelled a shaft beyond
# ~60 mm from it. With this probability a crop is centred on a point of one bone instead (points spread evenly
# along each bone's long axis: shafts, the fibula and the patella as often as the condyles)...
BONE_CROP_P = 0.65
BONE_CROP_WEIGHTS = {"femur": 1.0, "tibia": 1.0, "fibula": 1.5, "patella": 1.0}  # ...the bone drawn so...
BONE_CROP_JITTER_MM = 15.0  # ...plus this uniform jitter per axis
# The real label maps (cartilage, menisci and bone shapes as segmented, not drawn from a PCA) are few beside
# hundreds of shape-model knees; together they still get this share of the samples.
REAL_MAP_SHARE = 0.25

# --- Field of view (what the scanner acquired; outside it the image is 0, as at inference) --------------
FOV_P = 0.7  # probability that the acquired box cuts into the crop at all
FOV_INPLANE_MM = (100.0, 200.0)  # extent of the acquired box along the two in-plane axes
FOV_SLAB_MM = (60.0, 160.0)  # extent along the slice axis (24 slices x 4 mm = 96 mm)
FOV_OFFSET_MM = 30.0  # the box centre lies within ±this of the knee joint centre (knee off-centre)

# --- Tissue intensities (per generation label, per sample) ----------------------------------------------
MEAN_RANGE = (0.0, 1.0)  # tissue mean intensity
STD_RANGE = (0.01, 0.12)  # within-tissue standard deviation (texture before blur)
CORTEX_DARK_P = 0.85  # probability that the cortical rims are dark...
CORTEX_DARK_RANGE = (0.0, 0.12)  # ...with a mean in this range
AIR_DARK_P = 0.9  # probability that air outside the leg is dark...
AIR_DARK_RANGE = (0.0, 0.05)  # ...with a mean in this range
SAME_MARROW_P = 0.8  # probability that all bones share one marrow intensity (same tissue: fatty marrow)
# Adult marrow is fat: in T1, PD, T2 and fat-saturated images it looks like the fat around the knee. v3 saw
# marrow and fat as unrelated tissues, so on the real sample it let the patella run into the suprapatellar
# fat and quadriceps tendon (45 ml); here the cortex and the shape must separate them.
MARROW_LIKE_FAT_P = 0.5  # probability that the marrow means are fat's mean...
MARROW_FAT_JITTER = 0.05  # ...plus a uniform offset within ±this
# Fat-suppressed sequences (PD-FS, T2-FS, STIR: the commonest knee protocols) darken fat and fatty marrow
# together, so the femur's and tibia's outline is only the thin dark cortex between dark marrow and dark fat.
# Uniform tissue means make that case rare (~10 % of samples); v5 under-segmented the femur by 2-5 % in 6 of
# its 7 worst benchmark cases, all PD-FS. With this probability fat takes a dark mean and marrow follows it.
# (The v8 candidate, v5 fine-tuned 65 min with it, lifted the worst femur/tibia 0.961 -> 0.965/0.964 and lost
# on the fibula and patella; not released. Released models were trained without it: see their cards.)
FAT_SUPPRESSED_P = 0.25
FAT_SUPPRESSED_RANGE = (0.0, 0.25)
# The generation maps put a 2 mm band of "fluid/soft tissue" around every labelled structure: a cue real
# images do not always give (the patella's anterior surface lies in fat). With this probability the band
# takes fat's intensity.
BAND_LIKE_FAT_P = 0.25

# --- Image formation -------------------------------------------------------------------------------------
BIAS_STD = 0.35  # std of the log of the multiplicative bias field at its control points
BIAS_CONTROL_POINTS = 4  # coarse control grid per axis, upsampled (slowly varying coil sensitivity)
GAMMA_STD = 0.3  # intensity ** exp(N(0, GAMMA_STD)) after scaling to [0, 1]
LOWRES_P = 0.75  # probability of a thick-slice acquisition along one random axis...
SLICE_SPACING_MM = (1.5, 5.0)  # ...with this slice spacing...
SLICE_THICKNESS_FRACTION = (0.6, 1.0)  # ...and a slice thickness of this fraction of the spacing
INPLANE_BLUR_SIGMA_MM = (0.0, 0.8)  # extra partial-volume blur, all axes
NOISE_STD = (0.0, 0.10)  # Rician-like noise: |signal + N(0,s) + i N(0,s)|, s relative to the range [0, 1]

# --- Partial volume and targets (what a voxel of the model grid shows and what it should be called) ------
# Labels and intensities are sampled at SUPERSAMPLE x the model resolution and averaged down, so a voxel at a
# border shows the mixture of the tissues in it (at 1 a Gaussian blur of ``generator.PARTIAL_VOLUME_SIGMA_VOX``
# stands in, and the border's position inside the voxel is lost). With SOFT_TARGETS the target of a voxel is the
# fraction of each class in it (from the same supersampled labels) instead of the class at its centre: the model
# then learns where inside its 1.3 mm voxels a border lies, which the linear resampling to a finer acquisition
# grid turns into sub-voxel outlines (perfect fractions on the 1.3 mm grid score Fibula 0.971 / Patella 0.976
# on the benchmark, perfect centre classes 0.954 / 0.961: ``python -m trainer ceiling``). Both cost time: 0.10 ->
# 0.70 s per 96^3 sample, 0.07 -> 0.48 s per 80^3 (one thread). Tried from the v14 candidate (80^3 crops, lr 2e-4,
# 1265 steps, 35 min): its validation fell to 0.846 where v14 scores 0.864 on the same cases (Fibula 0.637 against
# 0.696), so it was stopped: the squared-denominator Dice that fractions need pulls far less on a small bone.
# With FINE_TARGETS the target is instead the class at each supersampled point, and training scores the network's
# probabilities interpolated linearly onto those points (``losses.dice_ce_loss``), the very resampling the
# pipeline applies before its argmax: the network learns sub-voxel borders through that interpolation, with the
# plain soft Dice (whose pull towards sharp voxels is then harmless: sharp at the finer points).
SUPERSAMPLE = 1
SOFT_TARGETS = False  # needs SUPERSAMPLE >= 2
# Tried from the v14 candidate (80^3 crops, lr 1e-4, 1837 steps, 70 min): validation 0.857 -> 0.869 (v14 0.864 on
# the same cases); on the benchmark the v15 candidate beats v12 on every bone (by 0.00003-0.0006) and its
# fibula's echo consistency rose from 0.723 to 0.895.
FINE_TARGETS = False  # needs SUPERSAMPLE >= 2; not with SOFT_TARGETS

# --- Background pseudo-tissues, made once in ``prepare`` (distance bands and a smooth random field) ------
FLUID_BAND_MM = 2.0  # soft tissue / joint fluid within this distance of a labelled structure
LEG_RADIUS_MM = 38.0  # beyond this distance from any labelled structure: air outside the leg...
LEG_RADIUS_JITTER_MM = 10.0  # ...with the outline perturbed by a smooth field of this amplitude
SUBCUTANEOUS_FAT_MM = 8.0  # fat layer just inside the leg outline
MUSCLE_FRACTION = 0.55  # fraction of the remaining soft tissue that becomes "muscle" (rest "fat")
NOISE_FIELD_SIGMA_MM = 8.0  # correlation length of the random clustering field
CORTEX_MM = 1.2  # cortical rim: bone voxels within this distance of the bone surface

# --- Tendons at the patella's poles, painted once in ``prepare`` (``tendons.py``) ------------------------------
QUADRICEPS_TENDON = {"length": (30.0, 60.0), "thickness": (5.0, 9.0), "width": (20.0, 35.0)}  # mm, uniform
PATELLAR_TENDON = {"length": (35.0, 55.0), "thickness": (4.0, 7.0), "width": (20.0, 30.0)}  # mm, uniform
TENDON_ANTERIOR_SHIFT_MM = (0.0, 4.0)  # the tendon's axis lies this far in front of the pole's centre
TENDON_TILT_DEG = 12.0  # its axis tilts forward or back by up to this
TENDON_OVERLAP_MM = 4.0  # it starts this far inside the pole (only soft tissue is painted: it meets the bone)
TENDON_REACH_MM = 70.0  # no tendon voxel lies farther than this from the patella's bounding box
TENDON_DARK_P = 0.9  # probability that the tendons are dark (as in every standard sequence)...
TENDON_DARK_RANGE = (0.0, 0.12)  # ...with a mean in this range


# --- Run settings that override a range (``train --synthesis NAME=VALUE``) -------------------------------------
def checked_overrides(overrides: dict) -> dict:
    """``overrides`` ({NAME: value}) after checking that each NAME is a range of this module and each value
    has its kind (a number for a number, a pair for a pair): a typo must not train a run on the defaults."""
    table = globals()
    out = {}
    for name, value in overrides.items():
        if not name.isupper() or name not in table or callable(table[name]):
            raise ValueError(f"--synthesis {name}: not a synthesis range (see trainer/ranges.py)")
        default = table[name]
        if isinstance(default, (int, float)) and not isinstance(default, bool):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"--synthesis {name}: a number is expected, not {value!r}")
            if isinstance(default, int) and value != int(value):
                raise ValueError(f"--synthesis {name}: a whole number is expected, not {value!r}")
            value = type(default)(value)
        elif isinstance(default, tuple):
            if not isinstance(value, (list, tuple)) or len(value) != len(default):
                raise ValueError(f"--synthesis {name}: {len(default)} numbers are expected, not {value!r}")
            value = tuple(float(v) for v in value)
        elif type(value) is not type(default):
            raise ValueError(f"--synthesis {name}: a {type(default).__name__} is expected, not {value!r}")
        out[name] = value
    return out


@contextmanager
def overridden(overrides: dict):
    """Sets the ranges in ``overrides`` for the duration of a run (the generator and the workers it forks read
    this module), then restores them."""
    table = globals()
    checked = checked_overrides(overrides)
    saved = {name: table[name] for name in checked}
    table.update(checked)
    try:
        yield
    finally:
        table.update(saved)
