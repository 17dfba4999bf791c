"""``kneeseg batch``: one model load, resumable, a failed case skipped, shards, a summary."""
from __future__ import annotations

import csv

import pytest
import SimpleITK as sitk

from KneeSegmentationLib.models import store as modelstore
from KneeSegmentationLib.cli.batch import Shard, find_cases
from KneeSegmentationLib.cli.main import main

from phantom import phantom


def _cases(folder):
    folder.mkdir()
    for i, seed in enumerate((1, 2)):
        image, _ = phantom(size=(48, 48, 32), spacing=(2.0, 2.0, 2.5), seed=seed)
        sitk.WriteImage(image, str(folder / f"knee{i}.nii.gz"))
    (folder / "broken.nrrd").write_text("not an image")
    (folder / ".hidden.nrrd").write_text("ignored")


def test_batch_resumes_reports_failures_and_loads_the_model_once(tiny_model, tmp_path, capsys, monkeypatch):
    _cases(tmp_path / "in")
    loads = []
    real = modelstore.load_model
    monkeypatch.setattr(modelstore, "load_model", lambda *a, **k: loads.append(a) or real(*a, **k))
    argv = ["batch", str(tmp_path / "in"), str(tmp_path / "out"), "--model", str(tiny_model), "--no-n4",
            "--statistics", "--labelmap", "-q"]
    assert main(argv) == 1  # one case failed
    printed = capsys.readouterr()
    assert len(loads) == 1
    assert "3 cases: 2 done, 0 already done, 1 failed" in printed.out
    assert "broken" in printed.out and "failed" in printed.out
    for name in ("knee0", "knee1"):
        for suffix in (".seg.nrrd", ".nii.gz", ".labels.json", ".statistics.json"):
            assert (tmp_path / "out" / f"{name}{suffix}").is_file()
    rows = list(csv.DictReader((tmp_path / "out" / "summary.csv").open()))
    assert [r["status"] for r in rows] == ["failed", "done", "done"] and rows[1]["side"] == "right"
    # Resume: finished cases are skipped, the broken one is tried again.
    (tmp_path / "in" / "broken.nrrd").unlink()
    assert main(argv) == 0
    assert "2 cases: 0 done, 2 already done, 0 failed" in capsys.readouterr().out
    assert len(loads) == 1  # nothing to do: no model load at all


def test_batch_replaces_outputs_only_with_force(tiny_model, tmp_path, capsys):
    _cases(tmp_path / "in")
    (tmp_path / "in" / "broken.nrrd").unlink()
    out = tmp_path / "out"
    argv = ["batch", str(tmp_path / "in"), str(out), "--model", str(tiny_model), "--no-n4", "--labelmap", "-q"]
    assert main(argv) == 0
    capsys.readouterr()
    # A case with only some of its outputs (a run stopped between two files) is not silently completed over
    # what exists: it fails, saying --force.
    (out / "knee1.nii.gz").unlink()
    assert main(argv) == 1
    printed = capsys.readouterr().out
    assert "2 cases: 0 done, 1 already done, 1 failed" in printed and "--force" in printed
    seg_before = (out / "knee0.seg.nrrd").stat().st_mtime_ns
    assert main(argv + ["--force"]) == 0  # every case again, outputs replaced
    assert "2 cases: 2 done, 0 already done, 0 failed" in capsys.readouterr().out
    assert (out / "knee1.nii.gz").is_file() and (out / "knee0.seg.nrrd").stat().st_mtime_ns != seg_before
    # An output folder that cannot be created is refused before any case.
    (tmp_path / "file").write_text("x")
    assert main(["batch", str(tmp_path / "in"), str(tmp_path / "file" / "out"), "--model", str(tiny_model)]) == 1
    assert "is a file" in capsys.readouterr().err


def test_shards_split_the_cases(tmp_path):
    _cases(tmp_path / "in")
    cases = find_cases(tmp_path / "in")
    assert [c.name for c in cases] == ["broken", "knee0", "knee1"]
    parts = [Shard(i, 2).take(cases) for i in (1, 2)]
    assert sorted(c.name for p in parts for c in p) == [c.name for c in cases] and not set(parts[0]) & set(parts[1])
    with pytest.raises(SystemExit) as e:
        main(["batch", str(tmp_path / "in"), str(tmp_path / "o"), "--shard", "3/2"])
    assert e.value.code == 2
