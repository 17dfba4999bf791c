"""The library in an MRML scene (Slicer, or slicer-core headless); no Qt.

``mrml`` bridges images and volume nodes, ``segments`` labelmaps and segmentation nodes, ``echoes`` lists a
multi-echo volume's echoes and ``choices`` the model picker's records (both torch-free); ``logic`` and
``training_logic`` are the module panel's scene-level logic; ``selftests`` holds the test bodies shared by the
Slicer self-test and pytest.
"""
