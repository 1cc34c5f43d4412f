"""The thinker-performer runtime: runs built engines; imports neither model_src nor torch at import time."""
