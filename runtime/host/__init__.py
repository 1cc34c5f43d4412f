"""The host path: CPU engines on numpy, the performer in this process or a second one; never imports torch."""
