"""Serving benchmarks: the inflated testbed (`testbed`), the soak test (`soak`), campaign scripts and summaries."""
