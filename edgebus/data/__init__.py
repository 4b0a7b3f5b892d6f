"""Data: the BrEaST-Lesions_USG reader, the synthetic generator, the split and preprocessing.

`preprocess` needs only numpy and pillow (the device path); the reader and the generator need
pandas/openpyxl (the `[train]` extra) and import them lazily.
"""

from edgebus.data.preprocess import PREPROCESS_VERSION, load_gray, load_mask, preprocess_contract, to_model_input

__all__ = ["PREPROCESS_VERSION", "load_gray", "load_mask", "preprocess_contract", "to_model_input"]
