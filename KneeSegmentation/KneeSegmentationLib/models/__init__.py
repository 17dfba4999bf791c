"""The models the segmentation runs: versioned folders with a card and safetensors weights.

``config`` (the network's hyper-parameters), ``card`` (``model.json``, checked) and ``registry`` (installed
versions, the default, rollback) are torch-free, so models can be listed without torch; ``network`` (the 3D
U-Net) and ``store`` (weights in and out) need torch. Nothing is imported here, so that stays true.
"""
