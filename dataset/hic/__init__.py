"""The steps of ``dataset/prepare_hic.py``, one module each, every step with its typed options.

``files`` (output-folder plumbing: safe ids, atomic writes, stats, the lock, clean-up), ``rows`` (the
metadata CSVs: streaming, ids, scores, captions), ``fetch`` and ``images`` (one HTTP download, one
image check), ``download``, ``select``, ``split``, ``export``. The package reads the prepared folder
through ``minigpt4/datasets/hic_format.py``; both follow dataset/README_HIC.md section 3.

Nothing here imports ``minigpt4`` (it would load PyTorch): the tool needs only the standard library,
Pillow, tqdm and matplotlib.
"""
