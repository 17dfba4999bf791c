"""KneeSegmentationLib: Femur, Tibia, Fibula and Patella segmentation of knee MRI, without Qt.

Folders by flow (each ``__init__`` only describes it and imports nothing, so listing models stays torch-free):

- ``segment/``: image → N4 → preprocess → network → clean-up → labelmap (``pipeline.run_segmentation`` chains
  ``io``, ``n4``, ``preprocess``, ``infer``, ``postprocess``; the Slicer module, the CLI and the trainer call it);
- ``models/``: model versions (``config``, ``card``, ``registry`` torch-free; ``network``, ``store``);
- ``learn/``: corrected case → save → fine-tune → compare → version;
- ``results/``: output files (``.seg.nrrd``, DICOM SEG, label tables, statistics, previews, terminology);
- ``scene/``: the same in an MRML scene (nodes, segments, echoes, the module's logic, self-tests);
- ``cli/``: ``kneeseg`` and its commands.

At the top: what every flow shares (constants, errors, paths, progress, limits, files, names, resources,
dependencies, metrics).
"""

__version__ = "0.1.0"
