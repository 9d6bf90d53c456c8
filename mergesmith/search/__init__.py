"""``mergesmith search``: find the best recipe in a space of recipes, on one machine or a Ray cluster.

Needs the ``search`` extra (cma, ray, matplotlib) and transformers. See ``driver.search``.
"""

from mergesmith.search.driver import SearchResult, search

__all__ = ["SearchResult", "search"]
