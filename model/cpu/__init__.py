"""CPU fast paths: docconv's C kernel, the weight formats it reads, and the module variants that call it.

The modeling files (``decoder.py``, ``sam.py``) are plain torch and the one specification of
what the model computes. Everything here computes the same thing faster on a CPU and is
attached by the loader, never called by the modeling files.
"""
