"""Training: datasets, augmentation, losses, metrics, the Trainer, fine-tuning, comparison.

Submodules import torch (except :mod:`.metrics` and :mod:`.config`, which are
numpy/PyYAML only and reused by inference and evaluation). Importing this
package imports nothing heavy; use the submodules:

* :mod:`.config` -- :class:`~.config.TrainConfig`, :func:`~.config.load_config`
* :mod:`.datasets` -- nnU-Net v2 raw and 2D slice folders -> :class:`~.datasets.SliceDataset`
* :mod:`.trainer` -- :class:`~.trainer.Trainer`, :func:`~.trainer.train`
* :mod:`.finetune` -- :func:`~.finetune.finetune` (GUI subprocess and CLI)
* :mod:`.evaluate` -- :func:`~.evaluate.evaluate_model`
* :mod:`.compare` -- the paper's four-model comparison (Table 3)
"""
