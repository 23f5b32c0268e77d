"""The command-line entry points (``caption.py``, ``evaluate.py``, ``demo.py``, ``train.py`` and
``dataset/prepare_hic.py`` are thin shims over these modules) and their one error style."""
