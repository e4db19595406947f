"""The benchmarks behind `bigbatch bench data|losses|step|layout|train`: each prints a table and one JSON line.

``command.py`` is `bigbatch bench`; each ``*_command.py`` is one benchmark's CLI (import-light: torch and the
measurement modules load when it runs); ``data_throughput.py`` + ``photos.py``, ``loss_scaling.py`` +
``loss_scaling_report.py`` and ``step_share.py`` are the measurements and their reports.
"""
