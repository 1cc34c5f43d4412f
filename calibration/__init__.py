"""INT8/FP8 calibration data and quantized engine builds."""
