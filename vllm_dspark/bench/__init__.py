"""Throughput-vs-SLA serving benchmark, client side: talks to an OpenAI-compatible server over HTTP only.

Modules: `client` (one timed streaming request), `stats` (the per-user speed definition, point summaries),
`metrics_scrape` (Prometheus deltas, acceptance), `sweep` (load points), `frontier` (Pareto frontier, SLA
readout, comparison), `server` (server subprocess), `report` (results document, tables), `schema` (the JSON
format, versioned), `plots` (PNGs). The command line is `vllm-dspark bench` (`vllm_dspark/cli/bench.py`).
"""
