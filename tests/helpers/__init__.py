"""Helpers the tests share: builders of inputs, trained models, configs, a client for the
server, capability probes, and the paths of the repository.

pytest puts ``tests/`` on ``sys.path`` (``pythonpath`` in pyproject.toml), so tests import them
as ``from helpers.<module> import ...``. ``dissect_train.py`` and ``build_graph_load.py`` are
scripts the tests run in subprocesses.
"""
