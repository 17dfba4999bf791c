"""What a result becomes: files and their descriptions.

``outputs`` checks a run's output files before the work and accounts for them after it; ``segfile``
(``.seg.nrrd``), ``dicomseg`` (DICOM SEG), ``labeltable`` (a labelmap's label table), ``statistics``
(volumes, the knee's side), ``preview`` (PNG) and ``terminology`` (Slicer's terminology strings) write them.
"""
