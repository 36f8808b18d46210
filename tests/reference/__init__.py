"""Independent test oracles (written from the spec in shared/docs, not from vllm_dspark)."""
