"""KneeSegmentationLib: Femur, Tibia, Fibula and Patella segmentation of knee MRI, without Qt.

Stages, one module each: ``io`` (read and validate images) → ``n4`` and ``preprocess`` (bias field, grid,
normalization) → ``modelcard``/``modelstore``/``network`` (safe model files; ``modelregistry`` finds them) →
``infer`` (sliding window) → ``postprocess`` (clean labelmap in the input geometry) → ``segments`` (MRML segmentation nodes). ``pipeline.run_segmentation``
chains them; the Slicer module, the ``kneeseg`` CLI and the trainer all call it.
"""

__version__ = "0.1.0"
