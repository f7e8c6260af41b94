"""The pieces of scripts/bench.py: the data model, the host probes, the
processes under test, the target measurements, and the reports.

Standard library only: the benchmark machine needs Python 3.9+ and nothing else.
"""
