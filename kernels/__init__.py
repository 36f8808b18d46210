"""Fused kernels for DSpark's sequential stage (installed as `vllm_dspark.kernels`).

Each op is a folder: `reference.py` (torch; the CPU path and the test oracle), `kernel.py` (Triton + launcher),
`__init__.py` (dispatch between them). Importing this package never imports vLLM, and imports Triton only when a
Triton path is actually taken.
"""
