"""User-facing CLI (`streamer`) and numpy-only helpers shared by the reference session and the runtime."""
__version__ = "0.1.0"
