"""The PaCX-MAE method as recipes: one script per stage, and ``pacx_full.py`` chaining them.

Each recipe is a runnable script (``python recipes/<stage>.py --help``) whose ``run`` function
composes pacx's pieces; this file makes them importable (``from recipes import distill``).
"""
