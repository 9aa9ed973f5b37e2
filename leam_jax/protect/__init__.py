"""LEAM-guided privacy protection of photos (``python -m leam_jax.protect``; LEAM_SPEC section 7).

The optimisation is the pure core :mod:`leam_jax.protection`; this package is its edge: the
photo's face region and masks (:mod:`.photos`), the run (:mod:`.job`), the measurements
(:mod:`.evaluate`), the tables (:mod:`.tables`) and the report (:mod:`.report`).
"""
