"""What a ``kneeseg segment`` (or one case of ``kneeseg batch``) writes, checked before the work and written after.

    outputs = Outputs(seg=Path("k.seg.nrrd"), labelmap=Path("k.nii.gz"), statistics=Path("k.json"))
    outputs.check(image_path)                 # suffixes, DICOM SEG prerequisites: one-line errors, nothing run
    written = outputs.write(image, image_path, echo, result)

Every file is written atomically (temp file, then rename); a labelmap gets its label table beside it
(``labeltable``). The ``.seg.nrrd`` is written without MRML (``segfile``), so no vtk or slicer import.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from .errors import InputError
from .io import IMAGE_SUFFIXES

SEG_SUFFIX = ".seg.nrrd"
PREVIEW_SUFFIX = ".png"


def _check_image_suffix(path: Path, what: str) -> None:
    if not path.name.lower().endswith(IMAGE_SUFFIXES) or path.name.lower().endswith(SEG_SUFFIX):
        raise InputError(f"{path.name}: the {what} must be an image file ({', '.join(IMAGE_SUFFIXES)})")


@dataclass
class Outputs:
    seg: Path | None = None
    labelmap: Path | None = None
    uncertainty: Path | None = None
    preview: Path | None = None
    statistics: Path | None = None
    dicom_seg: Path | None = None

    def paths(self) -> list[Path]:
        return [getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None]

    def check(self, image_path: Path | None = None) -> None:
        """Refuses, before any work, outputs that could not be written as asked."""
        if not self.paths():
            raise InputError("nothing to write: give -o OUT.seg.nrrd, --labelmap, --statistics or --dicom-seg")
        if self.seg is not None and not self.seg.name.endswith(SEG_SUFFIX):
            raise InputError(f"{self.seg.name}: the segmentation output must end with {SEG_SUFFIX}")
        if self.labelmap is not None:
            _check_image_suffix(self.labelmap, "labelmap")
        if self.uncertainty is not None:
            _check_image_suffix(self.uncertainty, "uncertainty map")
        if self.preview is not None and not self.preview.name.lower().endswith(PREVIEW_SUFFIX):
            raise InputError(f"{self.preview.name}: the preview is a .png")
        if self.statistics is not None:
            from .statistics import check_statistics_path

            check_statistics_path(self.statistics)
        if self.dicom_seg is not None:
            from .dicomseg import check_dicom_seg

            check_dicom_seg(Path(image_path) if image_path is not None else Path(""), self.dicom_seg)
        paths = [p.resolve() for p in self.paths()]
        if len(set(paths)) != len(paths):
            raise InputError("two outputs name the same file")

    def write(self, image, image_path: Path | None, echo: int | None, result, title: str = "") -> list[Path]:
        """Writes every requested output of ``result`` (a ``pipeline.SegmentationResult``) for ``image``."""
        written: list[Path] = []
        tag = result.model.tag
        if self.seg is not None:
            from .segfile import write_seg_nrrd

            written.append(write_seg_nrrd(result.labelmap, self.seg, model_tag=tag, laterality=result.laterality))
        if self.labelmap is not None:
            from .io import write_image
            from .labeltable import write_label_table

            written.append(write_image(result.labelmap, self.labelmap))
            written += write_label_table(self.labelmap, result.laterality)
        if self.uncertainty is not None and result.uncertainty is not None:
            from .io import write_image

            written.append(write_image(result.uncertainty, self.uncertainty))
        if self.statistics is not None:
            from .statistics import segment_statistics, write_statistics

            stats = segment_statistics(image, result.labelmap, result.laterality, tag)
            written.append(write_statistics(stats, self.statistics))
        if self.dicom_seg is not None:
            from .dicomseg import write_dicom_seg

            written.append(write_dicom_seg(result.labelmap, Path(image_path), echo, self.dicom_seg, tag,
                                           result.laterality))
        if self.preview is not None:
            from .preview import write_preview

            written.append(write_preview(image, result.labelmap, result.joint_center_lps, self.preview, title=title))
        return written
