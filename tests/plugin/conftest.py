import npe2
import pytest


@pytest.fixture(scope="session", autouse=True)
def _discover_plugins():
    """Make npe2 find this plugin's manifest, as napari does at start-up."""
    npe2.PluginManager.instance().discover()
