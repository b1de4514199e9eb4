"""ZK-APEX provable unlearning (DESIGN.md §6).

Provider: :func:`setup` (its reference string, sent to devices), :func:`make_mask`,
then :func:`verify_proof`. Device: :func:`unlearn`, then :func:`prove`. The math
needs numpy only; proving and verifying need the ``edgetrain_zk`` binding
(``pip install ./rust``) and raise ImportError saying so when it is missing.
"""
from .fisher import inverse_fisher_blocks, per_sample_gradients, target_layers
from .fixed_point import fisher_to_fixed, integer_step, to_fixed
from .proof import (ProofFormatError, commitments, describe, keygen, plan, proof_info, prove, setup, srs, uncovered,
                    verify_failure, verify_proof)
from .unlearn import LayerWitness, make_mask, obs_step, unlearn

__all__ = ["make_mask", "unlearn", "obs_step", "LayerWitness", "inverse_fisher_blocks", "per_sample_gradients",
           "target_layers", "to_fixed", "fisher_to_fixed", "integer_step", "plan", "describe", "prove", "verify_proof",
           "verify_failure", "keygen", "setup", "srs", "commitments", "proof_info", "uncovered", "ProofFormatError"]
