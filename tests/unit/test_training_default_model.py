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
    """The card's figures come from the user path: HU NIfTI -> reader -> segment defaults."""
    from napari_covid_seg.models.checkpoint import load_model_version
    from napari_covid_seg.training.evaluate import evaluate_model

    store = ModelStore()
    info = store.info("default")
    assert info.bundled and info.architecture == "res_att_unet"
    mv = load_model_version(store.resolve("default"))
    assert mv.meta["weights"]["dtype"] == "float16"
    assert "non-commercial" in mv.license and "MedSeg" in mv.license
    assert mv.preprocessing["input_size"] == 256
    assert mv.preprocessing["roi"]["mode"] == "lungs"
    for d in mv.provenance["data"]:  # no absolute path of the machine it was trained on
        assert not str(d["path"]).startswith("/") and d["path"]["root"] == "shared"

    m = evaluate_model("default", [require(SEMISEG)], transpose=True, subset="val", device="cpu")
    assert m["n_slices"] == mv.metrics["val_slices"] == 10
    assert m["dice_mean"] == pytest.approx(mv.metrics["val_dice_mean"], abs=0.005)
    assert m["dice"] == pytest.approx(mv.metrics["val_dice"], abs=0.005)
    assert m["dice_mean"] > 0.72  # beats the calibration recipes (0.68 / 0.70)
