"""napari dock widgets: the only Qt / magicgui / napari code of the plugin.

* :mod:`.segment` - "Segment lesions" (:class:`~.segment.SegmentWidget`)
* :mod:`.correct` - "Correct lesions" (:class:`~.correct.CorrectWidget`)
* :mod:`.finetune` - "Fine-tune model"

Nothing is imported here, so napari discovering the manifest stays cheap; each
widget module imports torch only when its widget is created.
"""
