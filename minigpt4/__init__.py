"""MiniGPT-4 for humorous image captioning (Oxford HIC): registry-driven models, data and training."""

import os
import sys

from minigpt4.common.registry import registry
from minigpt4.datasets import builders  # noqa: F401  (registration)
from minigpt4 import models  # noqa: F401
from minigpt4 import processors  # noqa: F401
from minigpt4 import tasks  # noqa: F401
from minigpt4.tools import make_tiny  # noqa: F401  (the ${minigpt4_tiny:...} config resolver)

from minigpt4.common.paths import cache_root  # noqa: E402

root_dir = os.path.dirname(os.path.abspath(__file__))
registry.register_path("library_root", root_dir)
registry.register_path("repo_root", os.path.dirname(root_dir))
registry.register_path("cache_root", str(cache_root()))
registry.register("MAX_INT", sys.maxsize)
registry.register("SPLIT_NAMES", ["train", "val", "test"])
