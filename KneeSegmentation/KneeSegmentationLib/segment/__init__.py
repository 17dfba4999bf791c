"""Segmenting one image: image → N4 → preprocess → network → clean-up → labelmap.

``io`` reads and validates the image, ``n4`` corrects the bias field, ``preprocess`` puts it on the model's
patient-aligned isotropic grid, ``infer`` runs the network in windows, ``postprocess`` turns probabilities into
a clean labelmap in the input geometry, ``laterality`` says which knee it is; ``pipeline.run_segmentation``
chains them, loading the model beside the N4 fit. No MRML, no Qt.
"""
