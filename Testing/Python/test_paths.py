"""Every root and its environment variable, from ``paths`` alone; each failure names its own root."""
from __future__ import annotations

from pathlib import Path

import pytest

from KneeSegmentationLib import paths
from KneeSegmentationLib.paths import RootError

ROOTS = {  # function, its variable, the default's tail under the home folder
    paths.user_models_root: (paths.USER_MODELS_ENV, ".kneesegmentation/Models"),
    paths.training_cases_dir: (paths.DATASET_ENV, ".kneesegmentation/TrainingCases"),
    paths.synthetic_dataset_dir: (paths.SYNTH_DATASET_ENV, ".kneesegmentation/SynthDataset"),
    paths.cache_dir: (paths.CACHE_ENV, ".cache/kneesegmentation"),
}


@pytest.mark.parametrize("root", ROOTS, ids=lambda f: f.__name__)
def test_a_variable_moves_its_root_and_an_empty_one_counts_as_unset(root, tmp_path, monkeypatch):
    env, tail = ROOTS[root]
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv(env, "")
    assert root() == tmp_path / "home" / tail
    monkeypatch.setenv(env, str(tmp_path / "elsewhere"))
    assert root() == tmp_path / "elsewhere"
    monkeypatch.setenv(env, "~/moved")
    assert root() == tmp_path / "home" / "moved"


@pytest.mark.parametrize("root", ROOTS, ids=lambda f: f.__name__)
def test_a_root_that_names_a_file_says_which_root_and_which_variable(root, tmp_path, monkeypatch):
    env, _ = ROOTS[root]
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv(env, str(tmp_path / "a-file"))
    with pytest.raises(RootError, match=rf"which is a file, not a folder; set \${env} to a folder"):
        root()


def test_without_a_home_folder_each_root_says_what_to_set(monkeypatch):
    def no_home():
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(Path, "home", staticmethod(no_home))
    for root, (env, _) in ROOTS.items():
        monkeypatch.delenv(env, raising=False)
        with pytest.raises(RootError, match=rf"no home folder .*set \${env} to a folder"):
            root()
    with pytest.raises(RootError, match="set \\$HOME"):
        paths.user_folder()


def test_the_cases_go_under_slicers_settings_when_the_module_passes_them(tmp_path, monkeypatch):
    monkeypatch.delenv(paths.DATASET_ENV, raising=False)
    assert paths.training_cases_dir(tmp_path) == tmp_path / "KneeSegmentation" / "TrainingCases"


def test_the_bundled_models_are_in_the_resources():
    assert paths.bundled_models_root() == paths.resources_root() / "Models"
    assert (paths.resources_root() / "UI").is_dir()
