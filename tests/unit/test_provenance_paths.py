"""Model provenance names data folders by a named root, never the training machine's path."""

from __future__ import annotations

from napari_covid_seg.training.finetune_run import resolve_data_path


def test_named_root_resolves_through_the_environment(tmp_path, monkeypatch):
    folder = tmp_path / "mydata" / "data" / "covid-semiseg" / "train"
    folder.mkdir(parents=True)
    ref = {"root": "shared", "path": "data/covid-semiseg/train"}
    monkeypatch.setenv("NAPARI_COVID_SEG_SHARED", str(tmp_path / "mydata"))
    assert resolve_data_path(ref) == str(folder)
    monkeypatch.setenv("NAPARI_COVID_SEG_SHARED", str(tmp_path / "elsewhere"))
    monkeypatch.chdir(tmp_path)
    assert resolve_data_path({"root": "nowhere", "path": "x"}) is None
    assert resolve_data_path("/some/plain/path") == "/some/plain/path"
    assert resolve_data_path({"path": "no root"}) is None


def test_bundled_model_stores_no_absolute_data_path():
    from napari_covid_seg.models.metadata import read_model_json
    from napari_covid_seg.models.store import ModelStore

    meta = read_model_json(ModelStore().resolve("default"))
    for source in meta["provenance"]["data"]:
        assert source["path"] == {"root": "shared", "path": "data/covid-semiseg/train"}
    assert "/work/" not in str(meta["provenance"].get("config", {}))
