"""Host-side input: sources (`sources`, `tfds_source`) and the batch stream (`pipeline`).

Nothing here imports TensorFlow at import time; `tfds_source` does so lazily,
inside its functions, when a config asks for a tfds dataset.
"""
