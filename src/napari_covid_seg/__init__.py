"""napari-covid-seg: COVID-19 lung lesion segmentation in chest CT for napari.

Importing this package is cheap: it imports neither torch nor Qt. Heavy
imports happen inside the functions that need them.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
