"""The calibration stage of data-aware methods (regmean): each input model runs on its
calibration text, layer by layer, and the Gram matrices of its linear layers' inputs become
per-tensor inputs of the merge (plan/calibration.py), cached on disk (cache.py).

transformers (the ``hf`` extra) is imported only when a model has to run (stream.py, and the
tokenizer in texts.py); a merge without a calibrated method never imports this package.
"""
