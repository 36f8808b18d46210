"""The first GPU run in one command: `python3 benchmarks/gpu/first_gpu_run.py` (see its docstring).

Modules: `plan` (the steps, as argv lists, for a GPU or a CPU dry run; pure), `runner` (runs them under one
deadline and packs everything into a few files), `drafters` (a bigram DSpark drafter and its DFlash twin when no
trained drafters are given), `frontier` (every configuration's server started at once, measured one at a time by
`vllm-dspark bench`).
"""
