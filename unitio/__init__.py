"""The numpy contract every layer shares: one unit's checks, solver noise and cache slots (`units`),
media I/O and the synthetic input (`media`), timing helpers (`timing`), the names and constants
every layer shares: stages, placements, the FP8 range, the filler frame (`names`).

The bottom of the import graph: it imports numpy and the standard library (imageio for MP4), never
another package of this project, so model_src/, runtime/, export/, calibration/ and the CLI all import
it downward.
"""
