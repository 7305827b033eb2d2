"""The built-in offline scorers, one module each; the registry imports every module of this package.

* :mod:`.passk`: P2 accuracy over k rollouts; :mod:`.pism`: P1 progressive image semantic masking;
  :mod:`.cde`: P4 causal discrepancy (with vs without the image); :mod:`.visual_entropy`: P3 Durian visual entropy
  (vision tower only); :mod:`.cmab`: P1 cross-modal attention balance; :mod:`.ace`: P4 attention confidence (both a
  sampled response, then one teacher-forced pass with attention reduced in per-layer hooks).
"""
