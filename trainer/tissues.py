"""Generation labels: the tissues the generator paints, and how they map to the model's classes.

The model predicts background, Femur, Tibia, Fibula, Patella (``KneeSegmentationLib.constants``). To render a
plausible image the generator needs more structure than that: cartilage, menisci, the dark cortical rim of each
bone, the tendons at the patella's poles and a few background pseudo-tissues (fluid, muscle, fat, air). Each
gets its own random intensity per sample; ``TARGET_OF`` maps them back to the model's classes.
"""
from __future__ import annotations

import numpy as np

from KneeSegmentationLib.constants import FEMUR, FIBULA, PATELLA, TIBIA

OUTSIDE = 0  # outside the source label map: treated as outside the acquired image (0, like at inference)
AIR, FAT, MUSCLE, FLUID = 1, 2, 3, 4
FEMUR_MARROW, FEMUR_CORTEX = 5, 6
TIBIA_MARROW, TIBIA_CORTEX = 7, 8
FIBULA_MARROW, FIBULA_CORTEX = 9, 10
PATELLA_MARROW, PATELLA_CORTEX = 11, 12
FEMORAL_CARTILAGE, TIBIAL_CARTILAGE, PATELLAR_CARTILAGE, MENISCUS = 13, 14, 15, 16
TENDON = 17  # quadriceps and patellar tendon (``tendons.py``): background, usually dark
NUM_GEN_LABELS = 18

GEN_NAMES = {
    OUTSIDE: "outside", AIR: "air", FAT: "fat", MUSCLE: "muscle", FLUID: "fluid/soft tissue",
    FEMUR_MARROW: "femur marrow", FEMUR_CORTEX: "femur cortex", TIBIA_MARROW: "tibia marrow",
    TIBIA_CORTEX: "tibia cortex", FIBULA_MARROW: "fibula marrow", FIBULA_CORTEX: "fibula cortex",
    PATELLA_MARROW: "patella marrow", PATELLA_CORTEX: "patella cortex",
    FEMORAL_CARTILAGE: "femoral cartilage", TIBIAL_CARTILAGE: "tibial cartilage",
    PATELLAR_CARTILAGE: "patellar cartilage", MENISCUS: "meniscus", TENDON: "tendon",
}
MARROWS = (FEMUR_MARROW, TIBIA_MARROW, FIBULA_MARROW, PATELLA_MARROW)
CORTICES = (FEMUR_CORTEX, TIBIA_CORTEX, FIBULA_CORTEX, PATELLA_CORTEX)
BONE_GEN = {  # generation bone -> (marrow label, cortex label)
    "femur": (FEMUR_MARROW, FEMUR_CORTEX),
    "tibia": (TIBIA_MARROW, TIBIA_CORTEX),
    "fibula": (FIBULA_MARROW, FIBULA_CORTEX),
    "patella": (PATELLA_MARROW, PATELLA_CORTEX),
}

# Model class of each generation label (everything not a segmented bone is background).
TARGET_OF = np.zeros(NUM_GEN_LABELS, np.int64)
TARGET_OF[[FEMUR_MARROW, FEMUR_CORTEX]] = FEMUR.label
TARGET_OF[[TIBIA_MARROW, TIBIA_CORTEX]] = TIBIA.label
TARGET_OF[[FIBULA_MARROW, FIBULA_CORTEX]] = FIBULA.label
TARGET_OF[[PATELLA_MARROW, PATELLA_CORTEX]] = PATELLA.label

# The mskt label maps' values (see DESIGN.md): what each means for generation.
MSKT_LABELS = {
    1: "femoral cartilage", 2: "tibial cartilage", 3: "tibial cartilage", 4: "patellar cartilage",
    5: "femur", 6: "tibia", 7: "patella", 8: "fibula", 9: "meniscus", 10: "meniscus",
}
SOFT_GEN = {"femoral cartilage": FEMORAL_CARTILAGE, "tibial cartilage": TIBIAL_CARTILAGE,
            "patellar cartilage": PATELLAR_CARTILAGE, "meniscus": MENISCUS}
