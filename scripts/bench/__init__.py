"""Benchmarks of the poller server against a bare Tornado app and beanstalkd.

``scripts/poller-bench`` is the entry point; each scenario is one module.
"""
