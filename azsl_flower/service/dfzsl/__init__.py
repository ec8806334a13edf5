"""DFZSL (Tang et al., "Data-Free Generalized Zero-Shot Learning", AAAI 2024) at the service.

From a base classifier alone: recover each seen class's direction (:mod:`.directions`),
derive a concentration (:mod:`.kappa`), sample virtual features around the directions
(:mod:`.vmf`, scipy's von Mises-Fisher sampler), map class semantics onto the directions
(:mod:`.alignment`), synthesise unseen-class features (:mod:`.generator`) and train a
cosine GZSL classifier (:mod:`.classifier`). No real feature is ever read here.
"""
