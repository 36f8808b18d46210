"""The DSpark drafter in plain torch: parallel backbone, sequential heads, confidence head."""
from vllm_dspark.model.backbone import ParallelBackbone
from vllm_dspark.model.drafter import DraftBlock, DSparkDrafter, target_features
from vllm_dspark.model.heads import ConfidenceHead, MarkovHead, build_heads, calibrated_confidence, logits_to_probs

__all__ = [
    "ConfidenceHead",
    "DSparkDrafter",
    "DraftBlock",
    "MarkovHead",
    "ParallelBackbone",
    "build_heads",
    "calibrated_confidence",
    "logits_to_probs",
    "target_features",
]
