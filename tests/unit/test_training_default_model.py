"""The bundled default model reproduces its recorded validation metrics on the real slices."""

from __future__ import annotations

import pytest

from napari_covid_seg.models.store import ModelStore

from ..conftest import SEMISEG, require

torch = pytest.importorskip("torch")


@pytest.fixture(autouse=True)
def _one_torch_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_bundled_default_matches_its_model_card():
    from napari_covid_seg.models.checkpoint import load_model_version
    from napari_covid_seg.training.datasets import load_slice_folder, split_dataset
    from napari_covid_seg.training.evaluate import evaluate_slices

    store = ModelStore()
    info = store.info("default")
    assert info.bundled and info.architecture == "res_att_unet"
    mv = load_model_version(store.resolve("default"))
    assert mv.meta["weights"]["dtype"] == "float16"
    assert "non-commercial" in mv.license and "MedSeg" in mv.license
    cfg = mv.provenance["config"]
    assert cfg["rotate_k"] == -1 and mv.preprocessing["input_size"] == 256

    data = load_slice_folder(
        require(SEMISEG), input_size=256, rotate_k=cfg["rotate_k"], keep_native=True
    )
    _, val_idx, rec = split_dataset(data, cfg["val_fraction"], cfg["split_seed"])
    assert rec["val_ids"] == mv.provenance["split"]["val_ids"]
    m = evaluate_slices(mv.model, data.subset(val_idx), native=True)
    assert m["dice"] == pytest.approx(mv.metrics["val_native_dice"], abs=0.005)
    assert m["dice"] > 0.72  # beats the calibration recipes (0.68 / 0.70)
